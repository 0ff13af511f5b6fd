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

  // Persistent subscription: create a group, consume with manual acks, a nak retries.
  const group = 'workers';
  const settings = new es.PersistentSubscriptionSettings(false, 0, false, 30000, 10, 500, 20, 500, 2000, 10, 1000, 0, 'RoundRobin');
  const created = await connection.createPersistentSubscription(stream, group, settings, credentials);
  check(created.status === 'success', `persistent subscription created: ${created.status}`);
  let duplicate = null;
  try { await connection.createPersistentSubscription(stream, group, settings, credentials); } catch (e) { duplicate = e; }
  check(duplicate !== null, 'creating the group twice is refused');
  const delivered = [];
  let naked = false;
  const persistent = await withTimeout(connection.connectToPersistentSubscription(stream, group, (s, e) => {
    const n = e.event.eventNumber.toNumber();
    if (n === 2 && !naked) {
      naked = true;
      s.fail(e, es.PersistentSubscriptionNakEventAction.Retry, 'try again');
      return;
    }
    delivered.push(n);
    s.acknowledge(e);
  }, () => {}, credentials, 10, false), 5000, 'connect to persistent subscription');
  await withTimeout(new Promise((resolve) => { const t = setInterval(() => { if (delivered.length >= 7) { clearInterval(t); resolve(); } }, 10); }), 5000, 'persistent events');
  check(naked && delivered.slice().sort().join() === '0,1,2,3,4,5,6', `persistent subscription delivered ${delivered} (2 after a nak)`);
  persistent.stop();
  const removed = await connection.deletePersistentSubscription(stream, group, credentials);
  check(removed.status === 'success', 'persistent subscription deleted');

  // Stream metadata: written to and read from `$$stream`; $maxCount limits reads.
  await connection.setStreamMetadataRaw(stream, es.expectedVersion.any, { $maxCount: 3, owner: 'node' });
  const meta = await connection.getStreamMetadataRaw(stream);
  check(meta.streamMetadata && meta.streamMetadata.owner === 'node' && meta.streamMetadata.$maxCount === 3, `metadata round trip: ${JSON.stringify(meta.streamMetadata)}`);
  const limited = await connection.readStreamEventsForward(stream, 0, 10, false);
  check(limited.events.map((e) => e.event.eventNumber.toNumber()).join() === '4,5,6', `$maxCount 3 leaves ${limited.events.map((e) => e.event.eventNumber)}`);

  // Transaction: nothing visible until the commit.
  const txStream = `${stream}-tx`;
  const tx = await connection.startTransaction(txStream, es.expectedVersion.noStream);
  await tx.write([json(0), json(1)]);
  const before = await connection.readStreamEventsForward(txStream, 0, 10, false);
  check(before.status === es.sliceReadStatus.StreamNotFound, 'transaction not visible before commit');
  const committed = await tx.commit();
  check(committed.nextExpectedVersion.toNumber() === 1, `transaction committed: next expected ${committed.nextExpectedVersion}`);

  // Access control: a stream only `reader` may read and write, only admins delete. The
  // emulator runs with `--user reader:r3ad --user stranger:s7ranger`.
  const guarded = `${stream}-acl`;
  await connection.appendToStream(guarded, es.expectedVersion.noStream, [json(0)]);
  await connection.setStreamMetadataRaw(guarded, es.expectedVersion.any, { $acl: { $r: 'reader', $w: 'reader', $d: '$admins' } });
  const anonymous = es.createConnection({ log: { debug() {}, info() {}, error: console.error } }, { host, port: Number(port) }, 'node-anonymous');
  await withTimeout(anonymous.connect(), 5000, 'anonymous connect');
  const denied = async (what, attempt) => {
    let error = null;
    try { await attempt(); } catch (e) { error = e; }
    check(error && /AccessDenied|Access denied/i.test(`${error.name} ${error.message}`), `${what} is refused with AccessDenied: ${error}`);
  };
  for (const [who, as] of [['anonymous', null], ['another user', new es.UserCredentials('stranger', 's7ranger')]]) {
    await denied(`${who}: read`, () => anonymous.readStreamEventsForward(guarded, 0, 10, false, as));
    await denied(`${who}: write`, () => anonymous.appendToStream(guarded, es.expectedVersion.any, [json(1)], as));
    await denied(`${who}: delete`, () => anonymous.deleteStream(guarded, es.expectedVersion.any, false, as));
  }
  await denied('anonymous: read $all', () => anonymous.readAllEventsForward(es.positions.start, 10, false));
  const reader = new es.UserCredentials('reader', 'r3ad');
  await anonymous.appendToStream(guarded, 0, [json(1)], reader);
  const permitted = await anonymous.readStreamEventsForward(guarded, 0, 10, false, reader);
  check(permitted.events.length === 2, `the named user reads and writes: ${permitted.events.length} events`);
  await denied('reader: delete', () => anonymous.deleteStream(guarded, es.expectedVersion.any, false, reader));
  anonymous.close();

  // Delete.
  await connection.deleteStream(stream, 6, true);
  const gone = await connection.readStreamEventsForward(stream, 0, 10, false);
  check(gone.status === es.sliceReadStatus.StreamDeleted, `hard-deleted stream: ${gone.status}`);

  connection.close();
  console.log(`eventstore emulator: ${checks} checks passed with node-eventstore-client`);
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
