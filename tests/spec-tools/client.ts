// A small typed Parlor client written against the types generated from the
// machine-readable spec (see spec/clients.md): `generated/parlor.d.ts` from
// spec/openapi.json by openapi-typescript, `generated/ws/*.ts` from
// spec/asyncapi.json by AsyncAPI Modelina. `tests/spec_validators.rs`
// regenerates both and type-checks this file with `tsc`, so a change of the
// spec that breaks a client like this one fails the test command.

import type { components, operations, paths } from "./generated/parlor";
import type { ClientFrameAuth } from "./generated/ws/ClientFrameAuth";
import type { ClientFrameSend } from "./generated/ws/ClientFrameSend";
import type { ClientFrameSubscribe } from "./generated/ws/ClientFrameSubscribe";
import type { Cursor } from "./generated/ws/Cursor";
import type { ServerFrameAck } from "./generated/ws/ServerFrameAck";
import type { ServerFrameCaughtUp } from "./generated/ws/ServerFrameCaughtUp";
import type { ServerFrameError } from "./generated/ws/ServerFrameError";
import type { ServerFrameEvent } from "./generated/ws/ServerFrameEvent";
import type { ServerFrameGap } from "./generated/ws/ServerFrameGap";
import type { ServerFrameJoined } from "./generated/ws/ServerFrameJoined";
import type { ServerFrameLeft } from "./generated/ws/ServerFrameLeft";
import type { ServerFramePong } from "./generated/ws/ServerFramePong";
import type { ServerFrameReady } from "./generated/ws/ServerFrameReady";
import type { ServerFrameUnsubscribed } from "./generated/ws/ServerFrameUnsubscribed";

type Schemas = components["schemas"];
type ErrCode = Schemas["ErrCode"];

/** The JSON body of an operation's answer with the given status. */
type AnswerOf<Op extends keyof operations, Status extends keyof operations[Op]["responses"]> =
  operations[Op]["responses"][Status] extends { content: { "application/json": infer T } } ? T : never;

/** Any error answer, with the errcodes the spec gives that endpoint. */
export class ParlorError extends Error {
  constructor(readonly status: number, readonly errcode: ErrCode, message: string, readonly retryAfterMs?: number) {
    super(`${errcode}: ${message}`);
  }
}

const CLIENT = "/_parlor/client/v1" as const;

// Every path used below must be a path of the spec.
const PATHS = {
  login: `${CLIENT}/login`,
  messages: `${CLIENT}/rooms/{room}/messages`,
  send: `${CLIENT}/rooms/{room}/send/{txn_id}`,
  ws: `${CLIENT}/ws`,
} as const satisfies Record<string, keyof paths>;

export class Client {
  private token?: string;

  constructor(private readonly base: string) {}

  private async call<T>(method: string, path: string, body?: unknown, query?: URLSearchParams): Promise<T> {
    const headers: Record<string, string> = { "content-type": "application/json" };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    const url = `${this.base}${path}${query ? `?${query}` : ""}`;
    const res = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const json = await res.json();
    if (!res.ok) {
      const err = json as Schemas["ErrorBody"];
      throw new ParlorError(res.status, err.errcode, err.error, err.retry_after_ms ?? undefined);
    }
    return json as T;
  }

  async login(
    body: operations["login"]["requestBody"]["content"]["application/json"],
  ): Promise<AnswerOf<"login", 200>> {
    const answer = await this.call<AnswerOf<"login", 200>>("POST", PATHS.login, body);
    this.token = answer.access_token;
    return answer;
  }

  send(room: string, txnId: string, text: string): Promise<Schemas["SendResponse"]> {
    const body: Schemas["SendRequest"] = { body: text };
    const path = PATHS.send.replace("{room}", encodeURIComponent(room)).replace("{txn_id}", txnId);
    return this.call("PUT", path, body);
  }

  messages(room: string, query: NonNullable<operations["messages"]["parameters"]["query"]>): Promise<Schemas["MessagesResponse"]> {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined) q.set(k, String(v));
    return this.call("GET", PATHS.messages.replace("{room}", encodeURIComponent(room)), undefined, q);
  }

  /** Follows a room live from `since`, gap-free; calls `onEvent` in seq order. */
  follow(room: string, since: Cursor | undefined, onEvent: (e: ServerFrameEvent) => void): WebSocket {
    const ws = new WebSocket(this.base.replace(/^http/, "ws") + PATHS.ws, "parlor.v1");
    ws.onopen = () => {
      const auth: ClientFrameAuth = { type: "auth", token: this.token ?? "" };
      const subscribe: ClientFrameSubscribe = { type: "subscribe", id: "s1", room, since };
      ws.send(JSON.stringify(auth));
      ws.send(JSON.stringify(subscribe));
    };
    ws.onmessage = (m) => handle(JSON.parse(m.data as string) as ServerFrame, onEvent);
    return ws;
  }
}

/** Every frame a server sends. */
export type ServerFrame =
  | ServerFrameReady
  | ServerFrameJoined
  | ServerFrameLeft
  | ServerFrameEvent
  | ServerFrameCaughtUp
  | ServerFrameGap
  | ServerFrameAck
  | ServerFrameUnsubscribed
  | ServerFrameError
  | ServerFramePong;

function handle(frame: ServerFrame, onEvent: (e: ServerFrameEvent) => void): void {
  switch (frame.type) {
    case "event":
      onEvent(frame);
      return;
    case "gap":
      console.warn(`events ${frame.from.seq + 1}..=${frame.to.seq} lost (${frame.reason})`);
      return;
    case "error":
      console.error(frame.errcode, frame.error);
      return;
    case "ready":
    case "joined":
    case "left":
    case "caught_up":
    case "ack":
    case "unsubscribed":
    case "pong":
      return;
    default: {
      const unknown: never = frame;
      throw new Error(`unknown frame ${JSON.stringify(unknown)}`);
    }
  }
}

export function sendFrame(room: string, txnId: string, body: string): ClientFrameSend {
  return { type: "send", room, txn_id: txnId, body };
}
