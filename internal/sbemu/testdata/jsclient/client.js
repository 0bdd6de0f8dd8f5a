// Drives the Service Bus emulator with Microsoft's JavaScript SDK
// (@azure/service-bus), a client written independently of the emulator and
// of the Go SDK. Each step prints one JSON line with what it observed;
// jsclient_test.go starts the emulator, runs this script and checks the
// lines. On the first failure it prints {"step": ..., "error": ...} and
// exits 1.
//
//   SBEMU_CONNECTION_STRING=Endpoint=sb://127.0.0.1:PORT;...;UseDevelopmentEmulator=true node client.js
//
// Queues it expects: "q" (MaxDeliveryCount 5), "sq" (sessions) and "hb"
// (sessions, holding one message sent by the Go SDK the way hookbridge
// sends its events).
"use strict";

const { ServiceBusClient } = require("@azure/service-bus");

const wait = { maxWaitTimeInMs: 5000 };
let current = "start";

function emit(step, fields) {
  process.stdout.write(JSON.stringify({ step, ...fields }) + "\n");
}

async function step(name, fn) {
  current = name;
  emit(name, await fn());
}

// receive collects n messages (receiveMessages may return fewer at a time).
async function receive(receiver, n) {
  const out = [];
  const deadline = Date.now() + 10000;
  while (out.length < n && Date.now() < deadline) {
    out.push(...(await receiver.receiveMessages(n - out.length, wait)));
  }
  if (out.length !== n) {
    throw new Error(`received ${out.length} messages, want ${n}`);
  }
  return out;
}

const view = (m) => ({
  messageId: m.messageId,
  body: m.body,
  deliveryCount: m.deliveryCount,
  sequenceNumber: m.sequenceNumber === undefined ? undefined : m.sequenceNumber.toNumber(),
  sessionId: m.sessionId,
  applicationProperties: m.applicationProperties,
});

async function main() {
  const client = new ServiceBusClient(process.env.SBEMU_CONNECTION_STRING, {
    retryOptions: { maxRetries: 1, timeoutInMs: 10000, retryDelayInMs: 100 },
  });
  await plainQueue(client);
  await sessions(client);
  await hookbridgeMessage(client);
  await step("close", async () => {
    await client.close();
    return {};
  });
}

async function plainQueue(client) {
  const sender = client.createSender("q");
  const receiver = client.createReceiver("q");

  await step("send", async () => {
    await sender.sendMessages({ body: "one", messageId: "m-1", applicationProperties: { k: "v", n: 7 } });
    return {};
  });
  await step("sendBatch", async () => {
    const batch = await sender.createMessageBatch();
    for (const id of ["b-1", "b-2", "b-3"]) {
      if (!batch.tryAddMessage({ body: id, messageId: id })) throw new Error("batch full");
    }
    await sender.sendMessages(batch);
    return { count: batch.count };
  });

  let msgs;
  await step("receive", async () => {
    msgs = await receive(receiver, 4);
    return { messages: msgs.map(view) };
  });
  const [m1, b1, b2, b3] = msgs;
  await step("complete", async () => {
    await receiver.completeMessage(m1);
    return {};
  });
  await step("renewLock", async () => {
    const before = b1.lockedUntilUtc.getTime();
    await new Promise((r) => setTimeout(r, 20));
    const after = (await receiver.renewMessageLock(b1)).getTime();
    return { extended: after > before };
  });
  await step("abandon", async () => {
    await receiver.abandonMessage(b1, { abandonedBy: "js" });
    const [again] = await receive(receiver, 1);
    await receiver.completeMessage(again);
    return { message: view(again) };
  });
  await step("deadLetter", async () => {
    await receiver.deadLetterMessage(b2, { deadLetterReason: "BadThing", deadLetterErrorDescription: "it was bad" });
    return {};
  });
  await step("defer", async () => {
    await receiver.deferMessage(b3);
    const [deferred] = await receiver.receiveDeferredMessages([b3.sequenceNumber]);
    await receiver.completeMessage(deferred);
    return { message: view(deferred), state: deferred.state };
  });

  const dlq = client.createReceiver("q", { subQueueType: "deadLetter" });
  await step("peekDeadLetter", async () => {
    const peeked = await dlq.peekMessages(10);
    return { messages: peeked.map(view) };
  });
  await step("receiveDeadLetter", async () => {
    const [d] = await receive(dlq, 1);
    await dlq.completeMessage(d);
    return {
      message: view(d),
      deadLetterReason: d.deadLetterReason,
      deadLetterErrorDescription: d.deadLetterErrorDescription,
      deadLetterSource: d.deadLetterSource,
    };
  });
  await dlq.close();

  await step("schedule", async () => {
    const at = new Date(Date.now() + 1000);
    const [keep, cancel] = await Promise.all([
      sender.scheduleMessages({ body: "later", messageId: "sched-1" }, at),
      sender.scheduleMessages({ body: "never", messageId: "sched-2" }, at),
    ]);
    await sender.cancelScheduledMessages(cancel);
    const peeked = await receiver.peekMessages(10, { fromSequenceNumber: keep[0] });
    const start = Date.now();
    const [m] = await receive(receiver, 1);
    await receiver.completeMessage(m);
    return { peekedState: peeked.map((p) => p.state), message: view(m), waitedMs: Date.now() - start };
  });

  await step("receiveAndDelete", async () => {
    await sender.sendMessages({ body: "gone", messageId: "rad-1" });
    const rad = client.createReceiver("q", { receiveMode: "receiveAndDelete" });
    const [m] = await receive(rad, 1);
    await rad.close();
    const left = await client.createReceiver("q").peekMessages(10);
    return { message: view(m), lockToken: m.lockToken === undefined ? null : m.lockToken, left: left.length };
  });

  await receiver.close();
  await sender.close();
}

async function sessions(client) {
  const sender = client.createSender("sq");
  await step("sendSessions", async () => {
    const batch = await sender.createMessageBatch();
    for (const [id, sid] of [["s1-1", "s1"], ["s1-2", "s1"], ["s2-1", "s2"], ["s1-3", "s1"]]) {
      batch.tryAddMessage({ body: id, messageId: id, sessionId: sid });
    }
    await sender.sendMessages(batch);
    return {};
  });

  await step("acceptSessionAndClose", async () => {
    const r = await client.acceptSession("sq", "s1");
    const [m] = await receive(r, 1);
    await r.close(); // without settling m
    return { sessionId: r.sessionId, message: view(m) };
  });
  await step("acceptSessionAgain", async () => {
    const r = await client.acceptSession("sq", "s1");
    const peeked = await r.peekMessages(10); // this session's only
    const got = await receive(r, 3);
    for (const m of got) await r.completeMessage(m);
    await r.setSessionState("step-7");
    const state = await r.getSessionState();
    const before = r.sessionLockedUntilUtc.getTime();
    await new Promise((res) => setTimeout(res, 20));
    const after = (await r.renewSessionLock()).getTime();
    await r.close();
    return { sessionId: r.sessionId, messages: got.map(view), state, renewed: after > before, peeked: peeked.length };
  });
  await step("acceptNextSession", async () => {
    const r = await client.acceptNextSession("sq");
    const [m] = await receive(r, 1);
    await r.completeMessage(m);
    await r.close();
    return { sessionId: r.sessionId, message: view(m) };
  });
  await step("acceptNextSessionNoneLeft", async () => {
    const impatient = new ServiceBusClient(process.env.SBEMU_CONNECTION_STRING, {
      retryOptions: { maxRetries: 0, timeoutInMs: 1000 },
    });
    const start = Date.now();
    try {
      const r = await impatient.acceptNextSession("sq");
      await r.close();
      return { accepted: r.sessionId };
    } catch (err) {
      return { code: err.code, waitedMs: Date.now() - start };
    } finally {
      await impatient.close();
    }
  });
  await sender.close();
}

async function hookbridgeMessage(client) {
  await step("hookbridgeMessage", async () => {
    const r = await client.acceptNextSession("hb");
    const [m] = await receive(r, 1);
    await r.completeMessage(m);
    await r.close();
    return {
      sessionId: r.sessionId,
      messageId: m.messageId,
      contentType: m.contentType,
      subject: m.subject,
      body: m.body,
      applicationProperties: m.applicationProperties,
      deliveryCount: m.deliveryCount,
    };
  });
}

let finished = false;
// A request the server never answers leaves a promise pending forever, and
// Node then exits with status 0 once nothing else is scheduled: report it.
process.on("exit", () => {
  if (!finished) {
    emit(current, { error: "the step never finished: a response never came" });
    process.exitCode = 1;
  }
});

main().then(
  () => {
    finished = true;
    emit("done", {});
  },
  (err) => {
    finished = true;
    emit(current, { error: `${err.name}: ${err.message}`, code: err.code });
    process.exit(1);
  },
);
