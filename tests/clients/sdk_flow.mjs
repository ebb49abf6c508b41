// A whole ePayment flow with the official Vipps MobilePay SDK (@vippsmobilepay/sdk),
// sent to the base URL in VIPPS_BASE_URL instead of Vipps. Run by tests/test_clients.py.
//
// The SDK has no base-URL option: it always builds https://apitest.vipps.no/... (test
// mode) and calls the global fetch. So this script replaces globalThis.fetch with one
// that keeps the SDK's request as built (method, headers, body) and swaps only the
// origin for VIPPS_BASE_URL's. A request whose origin is not the SDK's own is refused,
// so nothing can leave the machine by mistake.
//
// Credentials come from the environment exactly as an app would pass them; any that is
// unset stays undefined, which the SDK sends as the string "undefined":
//   VIPPS_CLIENT_ID, VIPPS_CLIENT_SECRET, VIPPS_SUBSCRIPTION_KEY, VIPPS_MSN
//
// VIPPS_FLOW picks the flow; each step is named as in the output:
//   epayment (default): payment A is captured in part, then refunded in part; payment B
//     is cancelled: token, createA, approveA, infoA, captureA, refundA, historyA,
//     createB, approveB, cancelB, infoB
//   checkout: a Checkout v3 session, authenticated by client credentials on every call:
//     sessionCreate, sessionInfo
//
// It prints one JSON object on stdout:
//   {"steps": {name: {"ok": true, "data": ...} | {"ok": false, "error": ...}},
//    "requests": [{"method", "sdk_url", "sent_url"}],
//    "references": {"A": ..., "B": ...} | {"session": ...}}
// and exits 0 when it ran to the end (whatever the steps answered), 1 on a crash.

import { randomBytes } from "node:crypto";
import { Client } from "@vippsmobilepay/sdk";

const SDK_ORIGINS = new Set(["https://apitest.vipps.no", "https://api.vipps.no"]);

const baseUrl = process.env.VIPPS_BASE_URL;
if (!baseUrl) {
  process.stderr.write("VIPPS_BASE_URL is required, e.g. http://127.0.0.1:8080\n");
  process.exit(2);
}
const target = new URL(baseUrl).origin;
const requests = [];
const realFetch = globalThis.fetch;

globalThis.fetch = async (input, init) => {
  const request = new Request(input, init);
  const url = new URL(request.url);
  if (!SDK_ORIGINS.has(url.origin)) {
    throw new Error(`refusing to send to ${url.origin}: not the SDK's Vipps origin`);
  }
  const sent = `${target}${url.pathname}${url.search}`;
  requests.push({ method: request.method, sdk_url: request.url, sent_url: sent });
  const hasBody = request.method !== "GET" && request.method !== "HEAD";
  return realFetch(sent, {
    method: request.method,
    headers: request.headers,
    body: hasBody ? await request.arrayBuffer() : undefined,
    redirect: "manual",
  });
};

const env = (name) => process.env[name] || undefined;
const clientId = env("VIPPS_CLIENT_ID");
const clientSecret = env("VIPPS_CLIENT_SECRET");

const client = Client({
  merchantSerialNumber: env("VIPPS_MSN"),
  subscriptionKey: env("VIPPS_SUBSCRIPTION_KEY"),
  useTestMode: true,
  retryRequests: false,
});

const steps = {};

function describe(error) {
  if (error instanceof Error) return { name: error.name, message: error.message };
  return error;
}

async function step(name, call) {
  const result = await call();
  steps[name] = result.ok ? { ok: true, data: result.data } : { ok: false, error: describe(result.error) };
  return result;
}

function reference(label) {
  return `sdk-${label}-${randomBytes(8).toString("hex")}`;
}

function newPayment(ref) {
  return {
    reference: ref,
    amount: { currency: "NOK", value: 1000 },
    paymentMethod: { type: "WALLET" },
    customer: { phoneNumber: "4712345678" },
    returnUrl: `https://example.com/return/${ref}`,
    userFlow: "WEB_REDIRECT",
    paymentDescription: "Two pairs of socks",
  };
}

async function epayment() {
  const tokenResult = await step("token", () => client.auth.getToken(clientId, clientSecret));
  const token = tokenResult.ok ? tokenResult.data.access_token : "";
  const a = reference("a");
  const b = reference("b");
  const approval = { customer: { phoneNumber: "4712345678" } };
  const nok = (value) => ({ modificationAmount: { currency: "NOK", value } });

  await step("createA", () => client.payment.create(token, newPayment(a)));
  await step("approveA", () => client.payment.forceApprove(token, a, approval));
  await step("infoA", () => client.payment.info(token, a));
  await step("captureA", () => client.payment.capture(token, a, nok(600)));
  await step("refundA", () => client.payment.refund(token, a, nok(200)));
  await step("historyA", () => client.payment.history(token, a));

  await step("createB", () => client.payment.create(token, newPayment(b)));
  await step("approveB", () => client.payment.forceApprove(token, b, approval));
  await step("cancelB", () => client.payment.cancel(token, b));
  await step("infoB", () => client.payment.info(token, b));
  return { A: a, B: b };
}

async function checkout() {
  const session = reference("session");
  const body = {
    merchantInfo: {
      callbackUrl: "https://example.com/vipps/callback",
      returnUrl: `https://example.com/return/${session}`,
      callbackAuthorizationToken: "not-a-secret",
    },
    transaction: {
      amount: { currency: "NOK", value: 2500 },
      reference: session,
      paymentDescription: "One pair of socks",
    },
  };
  await step("sessionCreate", () => client.checkout.create(clientId, clientSecret, body));
  await step("sessionInfo", () => client.checkout.info(clientId, clientSecret, session));
  return { session };
}

const FLOWS = { epayment, checkout };

async function main() {
  const flow = FLOWS[process.env.VIPPS_FLOW || "epayment"];
  if (!flow) throw new Error(`VIPPS_FLOW must be one of ${Object.keys(FLOWS).join(", ")}`);
  const references = await flow();
  process.stdout.write(JSON.stringify({ steps, requests, references }) + "\n");
}

main().catch((error) => {
  process.stderr.write(`${error?.stack ?? error}\n`);
  process.exit(1);
});
