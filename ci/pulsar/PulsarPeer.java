// A third-party peer for the Pulsar tests: Apache Pulsar's own Java client, on the real broker.
//
//   java -cp 'PEER:LIB/*' PulsarPeer produce BROKER_URL TOPIC MESSAGES KEYS
//       publishes MESSAGES messages over KEYS keys ("k0", "k1", …); message n of a key carries
//       the payload "KEY:n" and the properties seq=n and origin=java, and every message
//       waits for its receipt; prints "produced MESSAGES".
//   java -cp 'PEER:LIB/*' PulsarPeer consume BROKER_URL TOPIC SUBSCRIPTION MESSAGES SECONDS
//       two Key_Shared consumers of SUBSCRIPTION (from the earliest message, both joined
//       before either takes one) take MESSAGES messages between them, acking each; checks
//       that each key stays on one consumer, that
//       each key's seq property counts 0, 1, 2… and that every message kept its properties
//       (origin=headwaters, seq, traceparent); prints "consumed MESSAGES" or exits 1 saying
//       what was wrong, and exits 2 when SECONDS pass first.
//
// A token for an authenticated broker comes from PULSAR_TOKEN. `cargo xtask integration`
// builds this file with Maven (`pom.xml` beside it: pulsar-broker brings pulsar-client).

import java.util.HashMap;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import org.apache.pulsar.client.api.AuthenticationFactory;
import org.apache.pulsar.client.api.Consumer;
import org.apache.pulsar.client.api.Message;
import org.apache.pulsar.client.api.Producer;
import org.apache.pulsar.client.api.PulsarClient;
import org.apache.pulsar.client.api.ClientBuilder;
import org.apache.pulsar.client.api.SubscriptionInitialPosition;
import org.apache.pulsar.client.api.SubscriptionType;

public final class PulsarPeer {
    public static void main(String[] args) throws Exception {
        if (args.length < 5) {
            System.err.println("usage: PulsarPeer produce URL TOPIC MESSAGES KEYS | consume URL TOPIC SUBSCRIPTION MESSAGES SECONDS");
            System.exit(64);
        }
        ClientBuilder builder = PulsarClient.builder().serviceUrl(args[1]).operationTimeout(30, TimeUnit.SECONDS);
        String token = System.getenv("PULSAR_TOKEN");
        if (token != null && !token.isEmpty()) {
            builder.authentication(AuthenticationFactory.token(token));
        }
        try (PulsarClient client = builder.build()) {
            switch (args[0]) {
                case "produce" -> produce(client, args[2], Integer.parseInt(args[3]), Integer.parseInt(args[4]));
                case "consume" -> System.exit(consume(client, args[2], args[3], Integer.parseInt(args[4]), Integer.parseInt(args[5])));
                default -> {
                    System.err.println("unknown command " + args[0]);
                    System.exit(64);
                }
            }
        }
    }

    private static void produce(PulsarClient client, String topic, int messages, int keys) throws Exception {
        try (Producer<byte[]> producer = client.newProducer().topic(topic).enableBatching(false).create()) {
            int[] next = new int[keys];
            CompletableFuture<?>[] receipts = new CompletableFuture<?>[messages];
            for (int i = 0; i < messages; i++) {
                int k = i % keys;
                int seq = next[k]++;
                receipts[i] = producer.newMessage()
                        .key("k" + k)
                        .value(("k" + k + ":" + seq).getBytes(java.nio.charset.StandardCharsets.UTF_8))
                        .property("seq", Integer.toString(seq))
                        .property("origin", "java")
                        .sendAsync();
            }
            CompletableFuture.allOf(receipts).get(60, TimeUnit.SECONDS);
        }
        System.out.println("produced " + messages);
    }

    @SuppressWarnings("unchecked")
    private static int consume(PulsarClient client, String topic, String subscription, int messages, int seconds)
            throws Exception {
        // Both join paused and resume together: a consumer alone would take every key, and
        // keys moving to the second one later is Key_Shared working, not what is checked here.
        Consumer<byte[]>[] consumers = new Consumer[2];
        for (int i = 0; i < consumers.length; i++) {
            consumers[i] = client.newConsumer()
                    .topic(topic)
                    .subscriptionName(subscription)
                    .subscriptionType(SubscriptionType.Key_Shared)
                    .subscriptionInitialPosition(SubscriptionInitialPosition.Earliest)
                    .startPaused(true)
                    .subscribe();
        }
        for (Consumer<byte[]> c : consumers) {
            c.resume();
        }
        Map<String, Integer> owner = new HashMap<>();
        Map<String, Integer> nextSeq = new HashMap<>();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        int got = 0;
        while (got < messages) {
            if (System.nanoTime() > deadline) {
                System.err.println("timed out after " + got + " of " + messages + " messages");
                return 2;
            }
            for (int c = 0; c < consumers.length && got < messages; c++) {
                Message<byte[]> m = consumers[c].receive(20, TimeUnit.MILLISECONDS);
                if (m == null) {
                    continue;
                }
                String key = m.getKey();
                Integer was = owner.putIfAbsent(key, c);
                if (was != null && was != c) {
                    System.err.println("key " + key + " on both consumers");
                    return 1;
                }
                if (!"headwaters".equals(m.getProperty("origin")) || m.getProperty("traceparent") == null) {
                    System.err.println("properties lost: " + m.getProperties());
                    return 1;
                }
                int seq = Integer.parseInt(m.getProperty("seq"));
                int want = nextSeq.getOrDefault(key, 0);
                if (seq != want) {
                    System.err.println("key " + key + ": seq " + seq + " where " + want + " was next");
                    return 1;
                }
                String payload = new String(m.getValue(), java.nio.charset.StandardCharsets.UTF_8);
                if (!payload.equals(key + ":" + seq)) {
                    System.err.println("payload " + payload + " for key " + key + " seq " + seq);
                    return 1;
                }
                nextSeq.put(key, want + 1);
                consumers[c].acknowledge(m);
                got++;
            }
        }
        for (Consumer<byte[]> c : consumers) {
            c.close();
        }
        System.out.println("consumed " + got);
        return 0;
    }
}
