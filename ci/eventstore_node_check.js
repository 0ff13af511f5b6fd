// Check the EventStore emulator with a client we did not write: node-eventstore-client
// (npm; it needs protobufjs@7 beside it). Run by `cargo xtask integration`:
//
//     NODE_PATH=.../node_modules node ci/eventstore_node_check.js 127.0.0.1:PORT
'use strict';

const assert = require('assert');
const es = require('node-eventstore-client');

const [host, port] = process.argv[2].split(':');
const credentials = new es.UserCredentials('admin', 'changeit');
let checks = 0;
function check(cond, what) {
  assert.ok(cond, what);
  checks += 1;
}

function withTimeout(promise, ms, what) {
  return Promise.race([
    promise,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`timed out: ${what}`)), ms)),
  ]);
}

async function main() {
  const connection = es.createConnection(
    { defaultUserCredentials: credentials, heartbeatInterval: 750, heartbeatTimeout: 1500, log: { debug() {}, info() {}, error: console.error } },
    { host, port: Number(port) },
    'node-check',
  );
  await withTimeout(connection.connect(), 5000, 'connect');
  const stream = `node-${Date.now()}`;
  const json = (n) => es.createJsonEventData(require('crypto').randomUUID(), { n }, null, 'counted');

  // Append with expected versions.
  const first = await connection.appendToStream(stream, es.expectedVersion.noStream, [json(0), json(1), json(2)]);
  check(first.nextExpectedVersion.toNumber() === 2, `append: next expected version ${first.nextExpectedVersion}`);
  check(first.logPosition.commitPosition !== undefined, 'append: a log position');
  const second = await connection.appendToStream(stream, 2, [json(3)]);
  check(second.nextExpectedVersion.toNumber() === 3, 'append at an exact version');
  let wrong = null;
  try {
    await connection.appendToStream(stream, es.expectedVersion.noStream, [json(99)]);
  } catch (e) {
    wrong = e;
  }
  check(wrong && /WrongExpectedVersion|Wrong expected version/i.test(`${wrong.name} ${wrong.message}`), `wrong expected version is refused: ${wrong}`);

  // Reads.
  const forward = await connection.readStreamEventsForward(stream, 0, 10, false);
  check(forward.status === es.sliceReadStatus.Success, `forward read status ${forward.status}`);
  check(forward.events.length === 4, `forward read: ${forward.events.length} events`);
  check(forward.events.map((e) => JSON.parse(e.event.data.toString()).n).join() === '0,1,2,3', 'forward order');
  check(forward.isEndOfStream, 'forward: end of stream');
  check(forward.events[0].event.eventType === 'counted' && forward.events[0].event.isJson, 'type and JSON flag');
  const backward = await connection.readStreamEventsBackward(stream, es.streamPosition.end, 2, false);
  check(backward.events.map((e) => e.event.eventNumber.toNumber()).join() === '3,2', `backward read: ${backward.events.map((e) => e.event.eventNumber)}`);
  check(!backward.isEndOfStream && backward.nextEventNumber.toNumber() === 1, 'backward: next event number');
  const one = await connection.readEvent(stream, 1, false);
  check(one.status === es.eventReadStatus.Success && one.event.event.eventNumber.toNumber() === 1, 'read one event');
  const missing = await connection.readStreamEventsForward(`${stream}-missing`, 0, 10, false);
  check(missing.status === es.sliceReadStatus.StreamNotFound, `missing stream: ${missing.status}`);

  const all = await connection.readAllEventsForward(es.positions.start, 4096, false);
  const ours = all.events.filter((e) => e.event.eventStreamId === stream);
  check(ours.length === 4, `$all forward holds the stream's events: ${ours.length}`);
  const allBack = await connection.readAllEventsBackward(es.positions.end, 2, false);
  check(allBack.events.length === 2, '$all backward page');

  // Volatile subscription: sees what is appended after it.
  const live = [];
  const sub = await withTimeout(
    connection.subscribeToStream(stream, false, (s, e) => live.push(e.event.eventNumber.toNumber()), () => {}),
    5000,
    'subscribe',
  );
  check(sub.lastEventNumber.toNumber() === 3, `subscription confirmation: last event ${sub.lastEventNumber}`);
  await connection.appendToStream(stream, 3, [json(4), json(5)]);
  await withTimeout(new Promise((resolve) => { const t = setInterval(() => { if (live.length >= 2) { clearInterval(t); resolve(); } }, 10); }), 5000, 'live events');
  check(live.join() === '4,5', `volatile subscription saw ${live}`);
  sub.unsubscribe();

  // Catch-up subscription: history, then live, no gap, no duplicate.
  const caught = [];
  let liveStarted = false;
  const catchUp = connection.subscribeToStreamFrom(stream, null, false, (s, e) => caught.push(e.event.eventNumber.toNumber()), () => { liveStarted = true; }, () => {});
  await withTimeout(new Promise((resolve) => { const t = setInterval(() => { if (liveStarted) { clearInterval(t); resolve(); } }, 10); }), 5000, 'caught up');
  await connection.appendToStream(stream, 5, [json(6)]);
  await withTimeout(new Promise((resolve) => { const t = setInterval(() => { if (caught.length >= 7) { clearInterval(t); resolve(); } }, 10); }), 5000, 'catch-up live');
  check(caught.join() === '0,1,2,3,4,5,6', `catch-up subscription saw ${caught}`);
  catchUp.stop();

  // Delete.
  await connection.deleteStream(stream, 6, true);
  const gone = await connection.readStreamEventsForward(stream, 0, 10, false);
  check(gone.status === es.sliceReadStatus.StreamDeleted, `hard-deleted stream: ${gone.status}`);

  connection.close();
  console.log(`eventstore emulator: ${checks} checks passed with node-eventstore-client`);
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
