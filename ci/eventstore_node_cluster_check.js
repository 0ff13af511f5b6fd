// node-eventstore-client against the EventStore emulator's simulated cluster: it must
// discover the leader through our HTTP gossip document, then write and read there.
// Usage: node eventstore_node_cluster_check.js host:port,host:port,host:port (gossip seeds)
'use strict';
const assert = require('assert');
const es = require('node-eventstore-client');

async function main() {
  const seeds = process.argv[2].split(',').map((s) => {
    const [host, port] = s.split(':');
    return new es.GossipSeed({ host, port: Number(port) });
  });
  const credentials = new es.UserCredentials('admin', 'changeit');
  const connection = es.createConnection(
    { defaultUserCredentials: credentials, log: { debug() {}, info() {}, error() {} }, gossipTimeout: 1000, maxDiscoverAttempts: 5 },
    seeds,
  );
  let endpoint = null;
  connection.on('connected', (ep) => { endpoint = ep; });
  await connection.connect();
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('no connection through gossip within 10 s')), 10000);
    const poll = setInterval(() => { if (endpoint) { clearInterval(poll); clearTimeout(t); resolve(); } }, 10);
  });
  // The member the gossip calls the leader (v20 "Leader", v5 "Master") is where it went.
  const gossip = await new Promise((resolve, reject) => {
    const [host, port] = process.argv[2].split(',')[0].split(':');
    require('http').get({ host, port: Number(port), path: '/gossip?format=json' }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve(JSON.parse(body)));
    }).on('error', reject);
  });
  const leader = gossip.members.find((m) => m.state === 'Leader' || m.state === 'Master');
  assert.ok(leader, 'the gossip names a leader');
  assert.strictEqual(`${endpoint.host || endpoint.address}:${endpoint.port}`, `${leader.externalTcpIp}:${leader.externalTcpPort}`, 'connected to the leader');
  const stream = `cluster-check-${process.pid}`;
  const event = es.createJsonEventData(require('crypto').randomUUID(), { n: 1 }, null, 'checked');
  const written = await connection.appendToStream(stream, es.expectedVersion.noStream, [event]);
  assert.strictEqual(written.nextExpectedVersion.toNumber(), 0);
  // The client requires the leader for reads: a follower would redirect it.
  const read = await connection.readStreamEventsForward(stream, 0, 10, false);
  assert.strictEqual(read.events.length, 1);
  connection.close();
  console.log(`eventstore emulator cluster (${leader.state}): node-eventstore-client found the leader at ${endpoint.host || endpoint.address}:${endpoint.port} through gossip, wrote and read there`);
}

main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
