// Reads a stream of the EventStore emulator with node-eventstore-client, in pages of 4,096
// forward, and prints "EVENTS SECONDS" on its last line — the other side of the `eventstore`
// bench's read figure. Usage: node eventstore_read.js HOST:PORT STREAM
'use strict';
const es = require('node-eventstore-client');

async function main() {
  const [endpoint, stream] = process.argv.slice(2);
  const [host, port] = endpoint.split(':');
  const connection = es.createConnection(
    { defaultUserCredentials: new es.UserCredentials('admin', 'changeit'), log: { debug() {}, info() {}, error() {} } },
    { host, port: Number(port) },
  );
  await connection.connect();
  await new Promise((resolve) => connection.once('connected', resolve));
  const started = process.hrtime.bigint();
  let from = 0;
  let events = 0;
  for (;;) {
    const slice = await connection.readStreamEventsForward(stream, from, 4096, false);
    events += slice.events.length;
    from = slice.nextEventNumber.toNumber();
    if (slice.isEndOfStream) break;
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  connection.close();
  console.log(`${events} ${seconds}`);
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
