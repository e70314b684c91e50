// What every browser test script shares: Debian's Chromium through
// playwright-core (never a downloaded browser), a watchdog so a hung
// browser cannot hang CI, and `until`, which polls for a condition.

import { chromium } from 'playwright-core';

/** Headless Chromium from CHROMIUM_PATH (default Debian's /usr/bin/chromium), quiet and sandbox-free. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--no-first-run'],
  });
}

/** Fails the whole run after `seconds`; clear the returned timer when done. */
export function watchdog(seconds) {
  return setTimeout(() => {
    console.error(`FAIL: the test did not finish within ${seconds} s`);
    process.exit(1);
  }, seconds * 1000);
}

/** Polls `fn` until it returns a truthy value; fails with `what` and the last value seen. */
export async function until(what, fn, timeout) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last seen: ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
