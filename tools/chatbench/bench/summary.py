#!/usr/bin/env python3
"""Medians of chatbench runs: reads OUT/<backend>-<case>.jsonl (one JSON
object per run) and prints one markdown table per backend with the median of
each figure over the repeats, and how many repeats passed their checks."""

import json
import pathlib
import statistics
import sys

COLUMNS = [
    ("ok", "checks ok"),
    ("offered_rate", "offered/s"),
    ("deliveries_per_s", "deliveries/s"),
    ("sends_per_s", "sends/s"),
    ("p50_ms", "p50 ms"),
    ("p99_ms", "p99 ms"),
    ("max_ms", "max ms"),
    ("ack_p99_ms", "ack p99 ms"),
    ("lost", "lost"),
    ("duplicates", "dup"),
    ("out_of_order", "ooo"),
    ("client_cpu_pct", "client CPU %"),
    ("server_cpu_pct", "server CPU %"),
]

EXTRA = {
    "history-1000": [("first_page_p50_ms", "first page p50 ms"), ("latest_page_p50_ms", "latest page p50 ms")],
    "idle-19900": [("connections", "connections"), ("server_kib_per_connection", "server KiB/conn"), ("client_kib_per_connection", "client KiB/conn")],
    "resume-5x10": [("reconnects", "reconnects"), ("resent", "re-sent"), ("resume_p50_ms", "resume p50 ms"), ("resume_max_ms", "resume max ms")],
    "accounts-200": [("register_per_s", "register/s"), ("login_per_s", "login/s"), ("login_p50_ms", "login p50 ms"), ("argon2_ms", "argon2 ms"), ("login_efficiency", "login/(cores·argon2)")],
    "storm-200": [("login_per_s", "login/s"), ("quiet_p99_ms", "quiet p99 ms"), ("storm_p99_ms", "storm p99 ms"), ("p99_ratio", "p99 ratio")],
}


def median(values):
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not nums:
        return None
    m = statistics.median(nums)
    return round(m, 3) if isinstance(m, float) else m


def main(out):
    out = pathlib.Path(out)
    by_backend = {}
    for f in sorted(out.glob("*-*.jsonl")):
        if f.name.startswith("users-"):
            continue
        backend, case = f.stem.split("-", 1)
        runs = [json.loads(line) for line in f.read_text().splitlines() if line.strip().startswith("{")]
        if runs:
            by_backend.setdefault(backend, {})[case] = runs
    for backend, cases in by_backend.items():
        print(f"### {backend}\n")
        print("| case | " + " | ".join(h for _, h in COLUMNS) + " | other (medians) |")
        print("|---" * (len(COLUMNS) + 2) + "|")
        for case, runs in cases.items():
            cells = []
            for key, _ in COLUMNS:
                if key == "ok":
                    cells.append(f"{sum(1 for r in runs if r.get('ok') is True)}/{len(runs)}")
                else:
                    v = median([r.get(key) for r in runs])
                    cells.append("" if v is None else str(v))
            other = ", ".join(f"{h} {median([r.get(k) for r in runs])}" for k, h in EXTRA.get(case, []))
            print(f"| {case} | " + " | ".join(cells) + f" | {other} |")
        print()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bench-results")
