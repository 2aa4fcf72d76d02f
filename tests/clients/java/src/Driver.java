// Test driver for Switchyard's integration tests, using the official Java
// Kafka client (kafka-clients). The Rust tests run it as a subprocess and
// assert on the single JSON line it prints as the LAST line of stdout; all
// logging goes to stderr so stdout stays machine-readable.
//
// Build:  javac -d classes -cp "$(cat classpath.txt)" src/*.java
// Run:    java -Xmx256m -cp "classes:$(cat classpath.txt)" Driver <subcommand> [--opt value]...
//
// Subcommands: produce, consume, admin, admin-view, create-topic (see usage() below).
//
// Exit codes: 0 when the run did what it was asked, even if the counts reveal
// problems (the tests judge the counts); 1 for fatal crashes (JSON still
// printed with "fatal" set) and for a failed create-topic (a setup step the
// caller cannot continue without); 2 for usage errors.

import java.io.BufferedReader;
import java.io.BufferedWriter;
import java.io.IOException;
import java.io.PrintStream;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.nio.file.StandardCopyOption;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Collection;
import java.util.Arrays;
import java.util.Collections;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Set;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicReference;

import org.apache.kafka.clients.admin.AdminClient;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.AlterConfigOp;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.ConsumerGroupDescription;
import org.apache.kafka.clients.admin.ConsumerGroupListing;
import org.apache.kafka.clients.admin.ListOffsetsResult;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.admin.OffsetSpec;
import org.apache.kafka.clients.admin.TopicDescription;
import org.apache.kafka.clients.consumer.ConsumerConfig;
import org.apache.kafka.clients.consumer.ConsumerRebalanceListener;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.ConsumerRecords;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.consumer.OffsetAndMetadata;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.Node;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.TopicPartitionInfo;
import org.apache.kafka.common.config.ConfigResource;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.errors.WakeupException;
import org.apache.kafka.common.serialization.StringDeserializer;
import org.apache.kafka.common.serialization.StringSerializer;

public final class Driver {

    /** The real stdout, reserved for the final JSON line (System.out is redirected to stderr). */
    private static PrintStream jsonOut;

    /** Thrown for bad command lines; turned into exit code 2. */
    static final class UsageException extends Exception {
        private static final long serialVersionUID = 1L;
        UsageException(String msg) { super(msg); }
    }

    /** Outcome of a subcommand: the JSON object to print and the exit code. */
    static final class Result {
        final Map<String, Object> json;
        final int exitCode;
        Result(Map<String, Object> json, int exitCode) { this.json = json; this.exitCode = exitCode; }
    }

    public static void main(String[] argv) {
        // Must happen before any Kafka/slf4j class initialises its logger.
        System.setProperty("org.slf4j.simpleLogger.defaultLogLevel", "warn");
        System.setProperty("org.slf4j.simpleLogger.logFile", "System.err");
        // Anything a library might print to stdout would corrupt the protocol
        // with the Rust tests, so route System.out to stderr and keep the real
        // stdout only for our JSON line.
        jsonOut = System.out;
        System.setOut(System.err);

        String op = argv.length > 0 ? argv[0] : "";
        long start = System.nanoTime();
        int exitCode;
        Map<String, Object> json;
        try {
            Args args = Args.parse(argv);
            Result r;
            switch (op) {
                case "produce": r = produce(args); break;
                case "consume": r = consume(args); break;
                case "admin": r = admin(args); break;
                case "admin-view": r = adminView(args); break;
                case "create-topic": r = createTopic(args); break;
                default: throw new UsageException("unknown subcommand '" + op + "'");
            }
            json = r.json;
            exitCode = r.exitCode;
        } catch (UsageException e) {
            System.err.println(usage());
            json = base(op);
            json.put("fatal", "usage: " + e.getMessage());
            exitCode = 2;
        } catch (Throwable t) {
            t.printStackTrace(System.err);
            json = base(op);
            json.put("fatal", describe(t));
            exitCode = 1;
        }
        json.putIfAbsent("elapsed_ms", elapsedMs(start));
        jsonOut.println(Json.write(json));
        jsonOut.flush();
        // Client threads we could not stop cleanly must not keep the JVM alive.
        System.exit(exitCode);
    }

    static String usage() {
        return String.join("\n",
            "usage: Driver <subcommand> [options]",
            "  produce --bootstrap B --topic T[,T2...] --count N --keys K [--idempotent true|false] [--acks all]",
            "          [--linger-ms 5] [--rate R (0=unlimited)] [--key-prefix k] [--seq-start 0]",
            "          [--timeout-s 120] [--max-in-flight 5] [--prop k=v]...",
            "  consume --bootstrap B (--topic T[,T2...] | --pattern REGEX) --group G --members M --expect N [--timeout-s 120]",
            "          [--seen-file PATH] [--stop-after X] [--assignor range|cooperative-sticky|roundrobin|sticky]",
            "          [--auto-offset-reset earliest] [--prop k=v]...",
            "  admin --bootstrap B --topic T [--partitions 6] [--replication 3] [--group G] [--timeout-s 120]",
            "  admin-view --bootstrap B --topics T[,T2...] [--group G] [--timeout-s 60]",
            "  create-topic --bootstrap B --topic T --partitions P --replication R [--timeout-s 60]",
            "  --prop k=v (repeatable) overrides any client config property.");
    }

    // ---------------------------------------------------------------- produce

    static Result produce(Args a) throws UsageException {
        a.allow("bootstrap", "topic", "count", "keys", "idempotent", "acks", "linger-ms", "rate",
                "key-prefix", "seq-start", "timeout-s", "max-in-flight", "prop");
        String bootstrap = a.req("bootstrap");
        String topic = a.req("topic");
        // A comma-separated list: record i goes to topics[i % n].
        String[] topics = topic.split(",");
        long count = a.longReq("count");
        long keys = a.longReq("keys");
        if (keys <= 0) throw new UsageException("--keys must be > 0");
        boolean idempotent = a.bool("idempotent", true);
        String acks = a.str("acks", "all");
        long lingerMs = a.longOpt("linger-ms", 5);
        double rate = a.doubleOpt("rate", 0);
        String prefix = a.str("key-prefix", "k");
        long seqStart = a.longOpt("seq-start", 0);
        long timeoutMs = a.longOpt("timeout-s", 120) * 1000;
        long maxInFlight = a.longOpt("max-in-flight", 5);

        long start = System.nanoTime();
        long deadline = start + TimeUnit.MILLISECONDS.toNanos(timeoutMs);

        Properties p = new Properties();
        p.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
        p.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, Boolean.toString(idempotent));
        p.put(ProducerConfig.ACKS_CONFIG, acks);
        p.put(ProducerConfig.LINGER_MS_CONFIG, Long.toString(lingerMs));
        p.put(ProducerConfig.RETRIES_CONFIG, Integer.toString(Integer.MAX_VALUE));
        p.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, "120000");
        p.put(ProducerConfig.MAX_IN_FLIGHT_REQUESTS_PER_CONNECTION, Long.toString(maxInFlight));
        // send() may block on metadata or a full buffer; never longer than our budget.
        p.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, Long.toString(Math.max(1000, Math.min(60000, timeoutMs))));
        p.put(ProducerConfig.CLIENT_ID_CONFIG, "switchyard-java-producer");
        a.applyProps(p);

        AtomicLong acked = new AtomicLong();
        AtomicLong errors = new AtomicLong();
        ErrorSink firstError = new ErrorSink();
        long sent = 0;
        boolean timedOut = false;
        String fatal = null;

        KafkaProducer<String, String> producer = new KafkaProducer<>(p);
        Long producerId = null;
        try {
            for (long i = 0; i < count; i++) {
                if (System.nanoTime() > deadline) { timedOut = true; break; }
                if (rate > 0) {
                    // Pace against the start time rather than per record, so
                    // sleep granularity does not lower the achieved rate.
                    long due = start + (long) (i * 1e9 / rate);
                    long wait = due - System.nanoTime();
                    if (wait > 0) {
                        try {
                            TimeUnit.NANOSECONDS.sleep(wait);
                        } catch (InterruptedException e) {
                            Thread.currentThread().interrupt();
                            fatal = "interrupted";
                            break;
                        }
                    }
                }
                String key = prefix + "-" + (i % keys);
                String value = key + "|" + (seqStart + i / keys);
                sent++;
                try {
                    String to = topics[(int) (i % topics.length)];
                    producer.send(new ProducerRecord<>(to, key, value), (md, ex) -> {
                        if (ex == null) {
                            acked.incrementAndGet();
                        } else {
                            errors.incrementAndGet();
                            firstError.offer(ex);
                        }
                    });
                } catch (RuntimeException e) {
                    // Synchronous failure (metadata timeout, producer in a fatal
                    // state, ...): the callback will not run, count it here.
                    errors.incrementAndGet();
                    firstError.offer(e);
                }
            }
            // Wait (bounded) for every callback instead of an unbounded flush().
            while (acked.get() + errors.get() < sent) {
                if (System.nanoTime() > deadline) { timedOut = true; break; }
                try {
                    Thread.sleep(5);
                } catch (InterruptedException e) {
                    Thread.currentThread().interrupt();
                    fatal = "interrupted";
                    break;
                }
            }
            producerId = producerIdOf(producer);
        } finally {
            // close() flushes; past the deadline it aborts what is left, which
            // completes the outstanding callbacks with errors.
            long remainingMs = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
            producer.close(Duration.ofMillis(Math.max(0, Math.min(remainingMs, 30000))));
        }

        Map<String, Object> j = base("produce");
        j.put("topic", topic);
        j.put("sent", sent);
        j.put("acked", acked.get());
        j.put("errors", errors.get());
        j.put("unacked", Math.max(0, sent - acked.get() - errors.get()));
        j.put("producer_id", producerId);
        j.put("timed_out", timedOut);
        j.put("first_error", firstError.get());
        j.put("fatal", fatal);
        j.put("elapsed_ms", elapsedMs(start));
        return new Result(j, fatal == null ? 0 : 1);
    }

    /** The idempotent producer's id, read by reflection (tests compare it with the
     *  ids another cluster issued); null when unavailable. */
    static Long producerIdOf(KafkaProducer<?, ?> producer) {
        try {
            java.lang.reflect.Field f = KafkaProducer.class.getDeclaredField("transactionManager");
            f.setAccessible(true);
            Object tm = f.get(producer);
            if (tm == null) return null;
            java.lang.reflect.Method m = tm.getClass().getDeclaredMethod("producerIdAndEpoch");
            m.setAccessible(true);
            Object pe = m.invoke(tm);
            return pe.getClass().getField("producerId").getLong(pe);
        } catch (ReflectiveOperationException | RuntimeException e) {
            return null;
        }
    }

    // ---------------------------------------------------------------- consume

    /**
     * Shared bookkeeping across all consumer threads. One lock for everything:
     * batches are processed under it, which keeps the stop-after cut exact and
     * is cheap next to the network cost of polling.
     */
    static final class Ledger {
        final long expect;
        final long stopAfter;            // 0 = no limit
        final Set<String> seen = new HashSet<>();      // "key|seq"
        final Map<String, Long> maxSeq = new HashMap<>();
        final Map<String, Long> perTopic = new java.util.TreeMap<>();   // records processed per topic
        final Set<String> assignedTopics = new java.util.TreeSet<>();  // topics any member was given
        long consumed;                   // records processed in this run
        long duplicates;
        long orderViolations;
        long malformed;

        Ledger(long expect, long stopAfter) { this.expect = expect; this.stopAfter = stopAfter; }

        /** Records one previously-seen value loaded from the seen-file. */
        void preload(String value) {
            String[] kv = split(value);
            if (kv == null) return;
            if (seen.add(value)) bumpMax(kv[0], Long.parseLong(kv[1]));
        }

        private void bumpMax(String key, long seq) {
            maxSeq.merge(key, seq, Math::max);
        }

        /** Whether the run's goal (expected unique count or stop-after) is met. */
        synchronized boolean done() {
            return seen.size() >= expect || (stopAfter > 0 && consumed >= stopAfter);
        }

        /**
         * Processes records in poll order until stop-after is exhausted and
         * returns, per partition, the offset to commit (last processed + 1).
         * Records not processed here are not committed, so a restarted group
         * re-reads exactly those.
         */
        synchronized Map<TopicPartition, OffsetAndMetadata> process(ConsumerRecords<String, String> batch,
                                                                      long[] memberCount, ErrorSink err) {
            Map<TopicPartition, OffsetAndMetadata> commit = new HashMap<>();
            for (ConsumerRecord<String, String> r : batch) {
                if (stopAfter > 0 && consumed >= stopAfter) break;
                consumed++;
                memberCount[0]++;
                perTopic.merge(r.topic(), 1L, Long::sum);
                commit.put(new TopicPartition(r.topic(), r.partition()), new OffsetAndMetadata(r.offset() + 1));
                String value = r.value();
                String[] kv = value == null ? null : split(value);
                if (kv == null || (r.key() != null && !r.key().equals(kv[0]))) {
                    malformed++;
                    err.offer("malformed record at " + r.topic() + "-" + r.partition() + "@" + r.offset()
                            + ": key=" + r.key() + " value=" + value);
                    continue;
                }
                long seq = Long.parseLong(kv[1]);
                if (!seen.add(value)) {
                    duplicates++;
                    continue;
                }
                Long max = maxSeq.get(kv[0]);
                if (max != null && seq < max) orderViolations++;
                bumpMax(kv[0], seq);
            }
            return commit;
        }

        /** Splits "key|seq"; null if the value does not have that shape. */
        static String[] split(String value) {
            int bar = value.lastIndexOf('|');
            if (bar <= 0 || bar == value.length() - 1) return null;
            String seq = value.substring(bar + 1);
            for (int i = 0; i < seq.length(); i++) {
                if (!Character.isDigit(seq.charAt(i))) return null;
            }
            if (seq.length() > 18) return null;
            return new String[] {value.substring(0, bar), seq};
        }
    }

    static Result consume(Args a) throws UsageException, IOException {
        a.allow("bootstrap", "topic", "pattern", "group", "members", "expect", "timeout-s", "seen-file",
                "stop-after", "assignor", "auto-offset-reset", "keep-positions", "prop");
        String bootstrap = a.req("bootstrap");
        // Either a topic list or a regex: a pattern subscription finds its topics in
        // all-topics metadata, as applications that subscribe by prefix do.
        String pattern = a.str("pattern", null);
        String topic = pattern == null ? a.req("topic") : a.str("topic", null);
        if (pattern != null && topic != null) throw new UsageException("--topic and --pattern exclude each other");
        java.util.regex.Pattern compiled;
        try {
            compiled = pattern == null ? null : java.util.regex.Pattern.compile(pattern);
        } catch (java.util.regex.PatternSyntaxException e) {
            throw new UsageException("--pattern: " + e.getDescription());
        }
        String group = a.req("group");
        int members = (int) a.longReq("members");
        if (members <= 0) throw new UsageException("--members must be > 0");
        long expect = a.longReq("expect");
        long timeoutMs = a.longOpt("timeout-s", 120) * 1000;
        String seenFile = a.str("seen-file", null);
        long stopAfter = a.longOpt("stop-after", 0);
        String assignor = assignorClass(a.str("assignor", "range"));
        String reset = a.str("auto-offset-reset", "earliest");
        // A behaviour model of client libraries that keep the in-memory position of
        // every partition present in both the old and the new assignment (the
        // protocol allows it): positions held at a revoke are sought back to when
        // the same partitions come back in the next assignment.
        boolean keepPositions = a.bool("keep-positions", false);

        long start = System.nanoTime();
        long deadline = start + TimeUnit.MILLISECONDS.toNanos(timeoutMs);

        Ledger ledger = new Ledger(expect, stopAfter);
        long preloaded = 0;
        if (seenFile != null && Files.exists(Paths.get(seenFile))) {
            try (BufferedReader r = Files.newBufferedReader(Paths.get(seenFile), StandardCharsets.UTF_8)) {
                String line;
                while ((line = r.readLine()) != null) {
                    if (!line.isEmpty()) ledger.preload(line);
                }
            }
            preloaded = ledger.seen.size();
        }

        AtomicLong errors = new AtomicLong();
        ErrorSink firstError = new ErrorSink();
        AtomicBoolean stop = new AtomicBoolean(false);
        AtomicReference<String> fatal = new AtomicReference<>();
        List<KafkaConsumer<String, String>> consumers = Collections.synchronizedList(new ArrayList<>());
        long[][] perMember = new long[members][1];
        List<Thread> threads = new ArrayList<>();

        for (int m = 0; m < members; m++) {
            final int idx = m;
            Properties p = new Properties();
            p.put(ConsumerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
            p.put(ConsumerConfig.GROUP_ID_CONFIG, group);
            // Like the Java client's own default (consumer-<group>-<n>), the group is
            // part of the id, so members of different groups are told apart.
            p.put(ConsumerConfig.CLIENT_ID_CONFIG, "switchyard-java-consumer-" + group + "-" + idx);
            p.put(ConsumerConfig.KEY_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
            p.put(ConsumerConfig.VALUE_DESERIALIZER_CLASS_CONFIG, StringDeserializer.class.getName());
            p.put(ConsumerConfig.ENABLE_AUTO_COMMIT_CONFIG, "false");
            p.put(ConsumerConfig.AUTO_OFFSET_RESET_CONFIG, reset);
            p.put(ConsumerConfig.PARTITION_ASSIGNMENT_STRATEGY_CONFIG, assignor);
            a.applyProps(p);

            final AtomicReference<Map<TopicPartition, OffsetAndMetadata>> pendingRef = new AtomicReference<>();
            Thread t = new Thread(() -> {
                KafkaConsumer<String, String> c = null;
                try {
                    c = new KafkaConsumer<>(p);
                    consumers.add(c);
                    // Commit-on-revoke, as careful applications do: offsets whose
                    // commit failed (e.g. during a cooperative rebalance) are
                    // committed when their partitions are revoked; lost ones are
                    // dropped (their new owner reads them again).
                    final KafkaConsumer<String, String> cc = c;
                    final Map<TopicPartition, OffsetAndMetadata> pending = new HashMap<>();
                    final Map<TopicPartition, Long> held = new HashMap<>();
                    pendingRef.set(pending);
                    ConsumerRebalanceListener listener = new ConsumerRebalanceListener() {
                        @Override
                        public void onPartitionsRevoked(java.util.Collection<TopicPartition> parts) {
                            if (keepPositions) {
                                for (TopicPartition tp : parts) {
                                    try {
                                        held.put(tp, cc.position(tp, Duration.ofSeconds(5)));
                                    } catch (RuntimeException e) {
                                        // No position yet: nothing to keep.
                                    }
                                }
                            }
                            Map<TopicPartition, OffsetAndMetadata> mine = new HashMap<>();
                            for (TopicPartition tp : parts) {
                                OffsetAndMetadata o = pending.remove(tp);
                                if (o != null) mine.put(tp, o);
                            }
                            if (mine.isEmpty()) return;
                            try {
                                cc.commitSync(mine, Duration.ofSeconds(10));
                            } catch (RuntimeException e) {
                                errors.incrementAndGet();
                                firstError.offer(e);
                            }
                        }

                        @Override
                        public void onPartitionsAssigned(java.util.Collection<TopicPartition> parts) {
                            synchronized (ledger) {
                                for (TopicPartition tp : parts) ledger.assignedTopics.add(tp.topic());
                            }
                            if (!keepPositions) return;
                            // Only partitions of the assignment just before this one
                            // are kept; anything else starts from its committed offset.
                            for (TopicPartition tp : parts) {
                                Long pos = held.get(tp);
                                if (pos != null) cc.seek(tp, pos);
                            }
                            held.clear();
                        }

                        @Override
                        public void onPartitionsLost(java.util.Collection<TopicPartition> parts) {
                            for (TopicPartition tp : parts) {
                                pending.remove(tp);
                                held.remove(tp);
                            }
                        }
                    };
                    if (compiled != null) {
                        c.subscribe(compiled, listener);
                    } else {
                        c.subscribe(Arrays.asList(topic.split(",")), listener);
                    }
                    while (!stop.get() && !ledger.done()) {
                        if (System.nanoTime() > deadline) break;
                        ConsumerRecords<String, String> batch;
                        try {
                            batch = c.poll(Duration.ofMillis(250));
                        } catch (WakeupException w) {
                            break;
                        } catch (RuntimeException e) {
                            // Transient trouble (e.g. proxy/broker restart):
                            // count it and keep going until the deadline.
                            errors.incrementAndGet();
                            firstError.offer(e);
                            sleepQuietly(200);
                            continue;
                        }
                        if (batch.isEmpty()) continue;
                        Map<TopicPartition, OffsetAndMetadata> offsets =
                                ledger.process(batch, perMember[idx], firstError);
                        if (offsets.isEmpty()) continue;
                        Map<TopicPartition, OffsetAndMetadata> uncommitted = pendingRef.get();
                        uncommitted.putAll(offsets);
                        try {
                            c.commitSync(offsets, Duration.ofMillis(boundedMs(deadline, 30000, 5000)));
                            for (Map.Entry<TopicPartition, OffsetAndMetadata> e : offsets.entrySet()) {
                                uncommitted.remove(e.getKey(), e.getValue());
                            }
                        } catch (WakeupException w) {
                            break;
                        } catch (RuntimeException e) {
                            // A failed commit means these records will be
                            // redelivered; the duplicate count will show it.
                            errors.incrementAndGet();
                            firstError.offer(e);
                        }
                    }
                } catch (Throwable e) {
                    errors.incrementAndGet();
                    firstError.offer(e);
                    if (!(e instanceof RuntimeException)) fatal.compareAndSet(null, describe(e));
                } finally {
                    if (c != null) {
                        try {
                            // Auto-commit is off, so close() commits nothing; it
                            // just leaves the group so peers rebalance promptly.
                            c.close(Duration.ofSeconds(10));
                        } catch (RuntimeException e) {
                            // Closing is best effort; the outcome is already recorded.
                            System.err.println("consumer " + idx + " close failed: " + e);
                        }
                    }
                }
            }, "consumer-" + idx);
            t.setDaemon(true);
            threads.add(t);
            t.start();
        }

        // Members stop on their own at the goal or the deadline; the extra
        // grace covers an in-flight commit and close. Past that, wake them up.
        boolean interrupted = false;
        for (Thread t : threads) {
            try {
                long waitMs = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime()) + 20000;
                t.join(Math.max(1, waitMs));
            } catch (InterruptedException e) {
                interrupted = true;
                break;
            }
        }
        stop.set(true);
        synchronized (consumers) {
            for (KafkaConsumer<String, String> c : consumers) c.wakeup();
        }
        for (Thread t : threads) {
            try {
                t.join(15000);
            } catch (InterruptedException e) {
                interrupted = true;
                break;
            }
        }
        if (interrupted) {
            Thread.currentThread().interrupt();
            fatal.compareAndSet(null, "interrupted");
        }

        // Threads normally have finished; the lock guards against a straggler
        // that ignored wakeup() still processing a batch.
        long unique, consumed, duplicates, orderViolations, malformed;
        boolean goalMet;
        Map<String, Object> perTopic = new LinkedHashMap<>();
        List<Object> assignedTopics = new ArrayList<>();
        long[] memberConsumed = new long[members];
        synchronized (ledger) {
            unique = ledger.seen.size();
            consumed = ledger.consumed;
            duplicates = ledger.duplicates;
            orderViolations = ledger.orderViolations;
            malformed = ledger.malformed;
            goalMet = ledger.done();
            for (int m = 0; m < members; m++) memberConsumed[m] = perMember[m][0];
            perTopic.putAll(ledger.perTopic);
            assignedTopics.addAll(ledger.assignedTopics);
            if (seenFile != null) saveSeen(Paths.get(seenFile), ledger.seen);
        }

        Map<String, Object> j = base("consume");
        j.put("topic", topic);
        j.put("pattern", pattern);
        j.put("group", group);
        j.put("consumed", consumed);
        j.put("per_topic", perTopic);
        j.put("assigned_topics", assignedTopics);
        j.put("unique", unique);
        j.put("preloaded", preloaded);
        j.put("duplicates", duplicates);
        j.put("order_violations", orderViolations);
        j.put("malformed", malformed);
        j.put("missing", Math.max(0, expect - unique));
        j.put("members_consumed", toList(memberConsumed));
        j.put("timed_out", !goalMet);
        j.put("errors", errors.get() + malformed);
        j.put("first_error", firstError.get());
        j.put("fatal", fatal.get());
        j.put("elapsed_ms", elapsedMs(start));
        return new Result(j, fatal.get() == null ? 0 : 1);
    }

    static String assignorClass(String name) throws UsageException {
        switch (name) {
            case "range": return "org.apache.kafka.clients.consumer.RangeAssignor";
            case "roundrobin": return "org.apache.kafka.clients.consumer.RoundRobinAssignor";
            case "sticky": return "org.apache.kafka.clients.consumer.StickyAssignor";
            case "cooperative-sticky": return "org.apache.kafka.clients.consumer.CooperativeStickyAssignor";
            default: throw new UsageException("unknown --assignor '" + name + "'");
        }
    }

    /** Writes via a temp file and rename so a crash never leaves a truncated seen-file. */
    static void saveSeen(Path path, Set<String> seen) throws IOException {
        Path abs = path.toAbsolutePath();
        Path tmp = abs.resolveSibling(abs.getFileName() + ".tmp");
        List<String> sorted = new ArrayList<>(seen);
        Collections.sort(sorted);
        try (BufferedWriter w = Files.newBufferedWriter(tmp, StandardCharsets.UTF_8)) {
            for (String s : sorted) {
                w.write(s);
                w.newLine();
            }
        }
        Files.move(tmp, abs, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    }

    // ------------------------------------------------------------------ admin

    /** Collects the outcome of each admin step, in order. */
    static final class Steps {
        final List<Object> list = new ArrayList<>();
        boolean allOk = true;

        void add(String name, boolean ok, String detail) {
            Map<String, Object> s = new LinkedHashMap<>();
            s.put("name", name);
            s.put("ok", ok);
            s.put("detail", detail);
            list.add(s);
            allOk &= ok;
            System.err.println("admin step " + name + ": " + (ok ? "ok" : "FAILED") + " - " + detail);
        }
    }

    /** A step body; returns the detail text for a success, or throws StepFailed. */
    interface StepBody {
        String run() throws Exception;
    }

    static final class StepFailed extends Exception {
        private static final long serialVersionUID = 1L;
        StepFailed(String msg) { super(msg); }
    }

    /** Runs one step, converting exceptions into a failed step so later steps still run. */
    static void step(Steps steps, String name, long deadline, StepBody body) {
        if (System.nanoTime() > deadline) {
            steps.add(name, false, "skipped: overall --timeout-s exceeded");
            return;
        }
        try {
            steps.add(name, true, body.run());
        } catch (StepFailed e) {
            steps.add(name, false, e.getMessage());
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            steps.add(name, false, "interrupted");
        } catch (Exception e) {
            steps.add(name, false, describe(unwrap(e)));
        }
    }

    static Result admin(Args a) throws UsageException {
        a.allow("bootstrap", "topic", "partitions", "replication", "group", "timeout-s", "prop");
        String bootstrap = a.req("bootstrap");
        String topic = a.req("topic");
        int partitions = (int) a.longOpt("partitions", 6);
        short replication = (short) a.longOpt("replication", 3);
        String group = a.str("group", null);
        long timeoutMs = a.longOpt("timeout-s", 120) * 1000;

        long start = System.nanoTime();
        long deadline = start + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        Steps steps = new Steps();

        Properties p = adminProps(bootstrap);
        a.applyProps(p);
        // Set once list_topics has seen the topic. The producing steps depend on
        // it: with broker-side auto-creation a producer would silently create
        // a 1-partition topic and make the later checks misleading.
        AtomicBoolean topicListed = new AtomicBoolean(false);
        AdminClient admin = AdminClient.create(p);
        try {
            ConfigResource res = new ConfigResource(ConfigResource.Type.TOPIC, topic);

            step(steps, "create_topic", deadline, () -> {
                String how = createOrExists(admin, topic, partitions, replication, deadline) ? "created" : "already existed";
                waitForLeaders(admin, topic, partitions, deadline);
                return how + "; all " + partitions + " partitions have leaders";
            });

            step(steps, "list_topics", deadline, () -> {
                Set<String> names = admin.listTopics().names().get(callMs(deadline), TimeUnit.MILLISECONDS);
                if (!names.contains(topic)) throw new StepFailed("topic missing from " + names.size() + " listed topics");
                topicListed.set(true);
                return names.size() + " topics, includes " + topic;
            });

            step(steps, "describe_topic", deadline, () -> {
                TopicDescription d = describeTopic(admin, topic, deadline);
                List<TopicPartitionInfo> parts = d.partitions();
                if (parts.size() != partitions) {
                    throw new StepFailed("expected " + partitions + " partitions, got " + parts.size());
                }
                for (TopicPartitionInfo tp : parts) {
                    if (tp.leader() == null || tp.leader().isEmpty()) {
                        throw new StepFailed("partition " + tp.partition() + " has no leader");
                    }
                    if (tp.replicas().size() != replication) {
                        throw new StepFailed("partition " + tp.partition() + " has " + tp.replicas().size()
                                + " replicas, expected " + replication);
                    }
                }
                return parts.size() + " partitions, each with a leader and " + replication + " replicas";
            });

            step(steps, "describe_configs", deadline, () -> {
                Config c = admin.describeConfigs(Collections.singleton(res)).all()
                        .get(callMs(deadline), TimeUnit.MILLISECONDS).get(res);
                if (c == null || c.entries().isEmpty()) throw new StepFailed("no config entries returned");
                ConfigEntry ret = c.get("retention.ms");
                return c.entries().size() + " entries, retention.ms=" + (ret == null ? "absent" : ret.value());
            });

            step(steps, "alter_configs", deadline, () -> {
                AlterConfigOp op = new AlterConfigOp(new ConfigEntry("retention.ms", "3600000"), AlterConfigOp.OpType.SET);
                admin.incrementalAlterConfigs(Collections.singletonMap(res, Collections.singletonList(op)))
                        .all().get(callMs(deadline), TimeUnit.MILLISECONDS);
                return "set retention.ms=3600000";
            });

            step(steps, "verify_config", deadline, () -> {
                // Config changes propagate asynchronously; re-read for a while.
                long until = Math.min(deadline, System.nanoTime() + TimeUnit.SECONDS.toNanos(15));
                String last = null;
                while (true) {
                    Config c = admin.describeConfigs(Collections.singleton(res)).all()
                            .get(callMs(deadline), TimeUnit.MILLISECONDS).get(res);
                    ConfigEntry e = c == null ? null : c.get("retention.ms");
                    last = e == null ? null : e.value();
                    if ("3600000".equals(last)) return "retention.ms=3600000";
                    if (System.nanoTime() > until) throw new StepFailed("retention.ms=" + last + ", expected 3600000");
                    Thread.sleep(500);
                }
            });

            step(steps, "produce_10", deadline, () -> {
                if (!topicListed.get()) throw new StepFailed("skipped: topic not listed (would be auto-created)");
                Properties pp = new Properties();
                pp.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
                pp.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
                pp.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, StringSerializer.class.getName());
                pp.put(ProducerConfig.ACKS_CONFIG, "all");
                pp.put(ProducerConfig.MAX_BLOCK_MS_CONFIG, Long.toString(callMs(deadline)));
                a.applyProps(pp);
                try (KafkaProducer<String, String> prod = new KafkaProducer<>(pp)) {
                    List<java.util.concurrent.Future<?>> fs = new ArrayList<>();
                    for (int i = 0; i < 10; i++) {
                        fs.add(prod.send(new ProducerRecord<>(topic, "admin-" + i, "admin-" + i + "|0")));
                    }
                    prod.flush();
                    for (java.util.concurrent.Future<?> f : fs) f.get(callMs(deadline), TimeUnit.MILLISECONDS);
                }
                return "10 records acked";
            });

            step(steps, "list_offsets", deadline, () -> {
                if (!topicListed.get()) throw new StepFailed("skipped: topic not listed");
                Map<TopicPartition, OffsetSpec> earliest = new HashMap<>();
                Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
                int n = partitionCount(admin, topic, partitions, deadline);
                for (int i = 0; i < n; i++) {
                    earliest.put(new TopicPartition(topic, i), OffsetSpec.earliest());
                    latest.put(new TopicPartition(topic, i), OffsetSpec.latest());
                }
                Map<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> e =
                        admin.listOffsets(earliest).all().get(callMs(deadline), TimeUnit.MILLISECONDS);
                Map<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> l =
                        admin.listOffsets(latest).all().get(callMs(deadline), TimeUnit.MILLISECONDS);
                if (e.size() != n || l.size() != n) {
                    throw new StepFailed("got offsets for " + e.size() + "/" + l.size() + " of " + n + " partitions");
                }
                long eSum = 0, lSum = 0;
                for (int i = 0; i < n; i++) {
                    TopicPartition tp = new TopicPartition(topic, i);
                    long eo = e.get(tp).offset(), lo = l.get(tp).offset();
                    if (eo > lo) throw new StepFailed(tp + ": earliest " + eo + " > latest " + lo);
                    eSum += eo;
                    lSum += lo;
                }
                String detail = n + " partitions, earliest_sum=" + eSum + " latest_sum=" + lSum;
                if (lSum != 10) throw new StepFailed(detail + " (expected latest_sum=10)");
                return detail;
            });

            step(steps, "list_groups", deadline, () -> {
                Collection<ConsumerGroupListing> gs = admin.listConsumerGroups().all()
                        .get(callMs(deadline), TimeUnit.MILLISECONDS);
                StringBuilder sb = new StringBuilder(gs.size() + " groups");
                if (group != null) {
                    boolean found = gs.stream().anyMatch(g -> g.groupId().equals(group));
                    sb.append(", ").append(group).append(found ? " listed" : " not listed");
                }
                return sb.toString();
            });

            if (group != null) {
                step(steps, "describe_group", deadline, () -> {
                    ConsumerGroupDescription d = admin.describeConsumerGroups(Collections.singletonList(group))
                            .all().get(callMs(deadline), TimeUnit.MILLISECONDS).get(group);
                    if (d == null) throw new StepFailed("no description returned");
                    return "state=" + d.state() + " members=" + d.members().size()
                            + " assignor=" + d.partitionAssignor() + " coordinator=" + nodeText(d.coordinator());
                });
                step(steps, "list_group_offsets", deadline, () -> {
                    Map<TopicPartition, OffsetAndMetadata> offs = admin.listConsumerGroupOffsets(group)
                            .partitionsToOffsetAndMetadata().get(callMs(deadline), TimeUnit.MILLISECONDS);
                    long sum = 0;
                    for (OffsetAndMetadata o : offs.values()) if (o != null) sum += o.offset();
                    return offs.size() + " partitions with committed offsets, offset_sum=" + sum;
                });
            }

            step(steps, "describe_cluster", deadline, () -> {
                Collection<Node> nodes = admin.describeCluster().nodes().get(callMs(deadline), TimeUnit.MILLISECONDS);
                String id = admin.describeCluster().clusterId().get(callMs(deadline), TimeUnit.MILLISECONDS);
                Node ctl = admin.describeCluster().controller().get(callMs(deadline), TimeUnit.MILLISECONDS);
                if (nodes.isEmpty()) throw new StepFailed("no nodes");
                StringBuilder sb = new StringBuilder("nodes=" + nodes.size() + " cluster_id=" + id
                        + " controller=" + nodeText(ctl) + " [");
                boolean first = true;
                for (Node n : nodes) {
                    if (!first) sb.append(", ");
                    sb.append(nodeText(n));
                    first = false;
                }
                return sb.append("]").toString();
            });

            step(steps, "delete_topic", deadline, () -> {
                admin.deleteTopics(Collections.singleton(topic)).all().get(callMs(deadline), TimeUnit.MILLISECONDS);
                return "deleted";
            });

            step(steps, "verify_deleted", deadline, () -> {
                long until = Math.min(deadline, System.nanoTime() + TimeUnit.SECONDS.toNanos(30));
                while (true) {
                    Set<String> names = admin.listTopics().names().get(callMs(deadline), TimeUnit.MILLISECONDS);
                    if (!names.contains(topic)) return "gone from listTopics";
                    if (System.nanoTime() > until) throw new StepFailed("still listed after 30 s");
                    Thread.sleep(500);
                }
            });
        } finally {
            closeAdmin(admin);
        }

        Map<String, Object> j = base("admin");
        j.put("topic", topic);
        j.put("ok", steps.allOk);
        j.put("steps", steps.list);
        j.put("fatal", null);
        j.put("elapsed_ms", elapsedMs(start));
        return new Result(j, 0);
    }

    // ------------------------------------------------------------- admin-view

    /**
     * Reads what an admin tool sees, changing nothing: the listed topics, then for
     * each of --topics its partitions with their leaders and end offsets, and for
     * --group whether it is listed, its description and its committed offsets.
     * Every part is a step (a failed one leaves ok=false and the rest still runs).
     */
    static Result adminView(Args a) throws UsageException {
        a.allow("bootstrap", "topics", "group", "timeout-s", "prop");
        String bootstrap = a.req("bootstrap");
        List<String> topics = Arrays.asList(a.req("topics").split(","));
        String group = a.str("group", null);
        long timeoutMs = a.longOpt("timeout-s", 60) * 1000;
        long start = System.nanoTime();
        long deadline = start + TimeUnit.MILLISECONDS.toNanos(timeoutMs);
        Steps steps = new Steps();
        List<Object> listed = new ArrayList<>();
        Map<String, Object> perTopic = new LinkedHashMap<>();
        Map<String, Object> groupView = new LinkedHashMap<>();

        Properties p = adminProps(bootstrap);
        a.applyProps(p);
        AdminClient admin = AdminClient.create(p);
        try {
            step(steps, "list_topics", deadline, () -> {
                Collection<org.apache.kafka.clients.admin.TopicListing> ls = admin.listTopics().listings()
                        .get(callMs(deadline), TimeUnit.MILLISECONDS);
                List<String> names = new ArrayList<>();
                for (org.apache.kafka.clients.admin.TopicListing l : ls) names.add(l.name());
                Collections.sort(names);
                listed.addAll(names);
                return names.size() + " topics";
            });

            Map<String, Integer> partitions = new HashMap<>();
            step(steps, "describe_topics", deadline, () -> {
                Map<String, TopicDescription> ds = admin.describeTopics(topics).allTopicNames()
                        .get(callMs(deadline), TimeUnit.MILLISECONDS);
                for (String t : topics) {
                    TopicDescription d = ds.get(t);
                    Map<String, Object> v = new LinkedHashMap<>();
                    v.put("listed", listed.contains(t));
                    if (d == null) {
                        perTopic.put(t, v);
                        continue;
                    }
                    List<Object> leaders = new ArrayList<>();
                    for (TopicPartitionInfo tp : d.partitions()) {
                        leaders.add(tp.leader() == null ? null : (Object) (long) tp.leader().id());
                    }
                    v.put("partitions", (long) d.partitions().size());
                    v.put("leaders", leaders);
                    partitions.put(t, d.partitions().size());
                    perTopic.put(t, v);
                }
                return partitions.toString();
            });

            step(steps, "list_offsets", deadline, () -> {
                Map<TopicPartition, OffsetSpec> latest = new HashMap<>();
                for (Map.Entry<String, Integer> e : partitions.entrySet()) {
                    for (int i = 0; i < e.getValue(); i++) {
                        latest.put(new TopicPartition(e.getKey(), i), OffsetSpec.latest());
                    }
                }
                Map<TopicPartition, ListOffsetsResult.ListOffsetsResultInfo> l =
                        admin.listOffsets(latest).all().get(callMs(deadline), TimeUnit.MILLISECONDS);
                for (Map.Entry<String, Integer> e : partitions.entrySet()) {
                    Map<String, Object> ends = new LinkedHashMap<>();
                    for (int i = 0; i < e.getValue(); i++) {
                        ListOffsetsResult.ListOffsetsResultInfo info = l.get(new TopicPartition(e.getKey(), i));
                        ends.put(Integer.toString(i), info == null ? null : (Object) info.offset());
                    }
                    @SuppressWarnings("unchecked")
                    Map<String, Object> v = (Map<String, Object>) perTopic.get(e.getKey());
                    v.put("end_offsets", ends);
                }
                return l.size() + " partitions";
            });

            if (group != null) {
                groupView.put("id", group);
                step(steps, "list_groups", deadline, () -> {
                    Collection<ConsumerGroupListing> gs = admin.listConsumerGroups().all()
                            .get(callMs(deadline), TimeUnit.MILLISECONDS);
                    long n = gs.stream().filter(g -> g.groupId().equals(group)).count();
                    groupView.put("listed", n);
                    return gs.size() + " groups, " + group + " listed " + n + " times";
                });
                step(steps, "describe_group", deadline, () -> {
                    ConsumerGroupDescription d = admin.describeConsumerGroups(Collections.singletonList(group))
                            .all().get(callMs(deadline), TimeUnit.MILLISECONDS).get(group);
                    if (d == null) throw new StepFailed("no description returned");
                    groupView.put("state", d.state().toString());
                    groupView.put("members", (long) d.members().size());
                    groupView.put("protocol", d.partitionAssignor());
                    groupView.put("coordinator", d.coordinator() == null ? null : (Object) (long) d.coordinator().id());
                    return "state=" + d.state() + " coordinator=" + nodeText(d.coordinator());
                });
                step(steps, "list_group_offsets", deadline, () -> {
                    Map<TopicPartition, OffsetAndMetadata> offs = admin.listConsumerGroupOffsets(group)
                            .partitionsToOffsetAndMetadata().get(callMs(deadline), TimeUnit.MILLISECONDS);
                    Map<String, Object> committed = new java.util.TreeMap<>();
                    for (Map.Entry<TopicPartition, OffsetAndMetadata> e : offs.entrySet()) {
                        committed.put(e.getKey().topic() + "/" + e.getKey().partition(),
                                e.getValue() == null ? null : (Object) e.getValue().offset());
                    }
                    groupView.put("offsets", committed);
                    return offs.size() + " partitions with committed offsets";
                });
            }
        } finally {
            closeAdmin(admin);
        }

        Map<String, Object> j = base("admin-view");
        j.put("ok", steps.allOk);
        j.put("listed", listed);
        j.put("topics", perTopic);
        j.put("group", group == null ? null : groupView);
        j.put("steps", steps.list);
        j.put("fatal", null);
        j.put("elapsed_ms", elapsedMs(start));
        return new Result(j, 0);
    }

    // ----------------------------------------------------------- create-topic

    static Result createTopic(Args a) throws UsageException {
        a.allow("bootstrap", "topic", "partitions", "replication", "timeout-s", "prop");
        String bootstrap = a.req("bootstrap");
        String topic = a.req("topic");
        int partitions = (int) a.longReq("partitions");
        short replication = (short) a.longReq("replication");
        long timeoutMs = a.longOpt("timeout-s", 60) * 1000;
        long start = System.nanoTime();
        long deadline = start + TimeUnit.MILLISECONDS.toNanos(timeoutMs);

        Map<String, Object> j = base("create-topic");
        j.put("topic", topic);
        Properties p = adminProps(bootstrap);
        a.applyProps(p);
        boolean ok;
        String detail;
        Boolean existed = null;
        AdminClient admin = AdminClient.create(p);
        try {
            existed = !createOrExists(admin, topic, partitions, replication, deadline);
            // Callers produce right away, so only report success once every
            // partition has a leader (an existing topic may have fewer
            // partitions than asked; report its real count).
            int n = partitionCount(admin, topic, partitions, deadline);
            waitForLeaders(admin, topic, n, deadline);
            ok = true;
            detail = (existed ? "already existed" : "created") + ", " + n + " partitions with leaders";
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
            ok = false;
            detail = "interrupted";
        } catch (Exception e) {
            ok = false;
            detail = describe(unwrap(e));
        } finally {
            closeAdmin(admin);
        }
        j.put("ok", ok);
        j.put("existed", existed);
        j.put("detail", detail);
        j.put("fatal", ok ? null : detail);
        j.put("elapsed_ms", elapsedMs(start));
        return new Result(j, ok ? 0 : 1);
    }

    // ---------------------------------------------------------- admin helpers

    static Properties adminProps(String bootstrap) {
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "switchyard-java-admin");
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "30000");
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "60000");
        return p;
    }

    /**
     * Plain close() waits for calls still pending (up to default.api.timeout.ms)
     * after we gave up on them; keep shutdown short instead.
     */
    static void closeAdmin(AdminClient admin) {
        try {
            admin.close(Duration.ofSeconds(5));
        } catch (RuntimeException e) {
            System.err.println("admin close failed: " + e);
        }
    }

    /** Creates the topic; returns false (not an error) if it already exists. */
    static boolean createOrExists(AdminClient admin, String topic, int partitions, short replication, long deadline)
            throws Exception {
        try {
            admin.createTopics(Collections.singleton(new NewTopic(topic, partitions, replication)))
                    .all().get(callMs(deadline), TimeUnit.MILLISECONDS);
            return true;
        } catch (ExecutionException e) {
            if (e.getCause() instanceof TopicExistsException) return false;
            throw e;
        }
    }

    /** Describes a topic, retrying while metadata for a fresh topic is still propagating. */
    static TopicDescription describeTopic(AdminClient admin, String topic, long deadline) throws Exception {
        long until = Math.min(deadline, System.nanoTime() + TimeUnit.SECONDS.toNanos(10));
        while (true) {
            try {
                return admin.describeTopics(Collections.singleton(topic)).allTopicNames()
                        .get(callMs(deadline), TimeUnit.MILLISECONDS).get(topic);
            } catch (ExecutionException e) {
                if (System.nanoTime() > until) throw e;
                Thread.sleep(250);
            }
        }
    }

    static int partitionCount(AdminClient admin, String topic, int fallback, long deadline) {
        try {
            return describeTopic(admin, topic, deadline).partitions().size();
        } catch (Exception e) {
            return fallback;
        }
    }

    /** Waits (bounded) until the topic shows `partitions` partitions, each with a leader. */
    static void waitForLeaders(AdminClient admin, String topic, int partitions, long deadline) throws Exception {
        long until = Math.min(deadline, System.nanoTime() + TimeUnit.SECONDS.toNanos(30));
        String why;
        while (true) {
            try {
                TopicDescription d = admin.describeTopics(Collections.singleton(topic)).allTopicNames()
                        .get(callMs(deadline), TimeUnit.MILLISECONDS).get(topic);
                long led = d.partitions().stream().filter(tp -> tp.leader() != null && !tp.leader().isEmpty()).count();
                if (d.partitions().size() >= partitions && led == d.partitions().size()) return;
                why = led + "/" + d.partitions().size() + " partitions have leaders";
            } catch (ExecutionException e) {
                why = describe(e.getCause());
            }
            if (System.nanoTime() > until) throw new StepFailed("topic not ready: " + why);
            Thread.sleep(250);
        }
    }

    /** Per-call timeout: the time left (at least 1 s, at most 30 s). */
    static long callMs(long deadline) {
        return boundedMs(deadline, 30000, 1000);
    }

    static long boundedMs(long deadline, long max, long min) {
        long left = TimeUnit.NANOSECONDS.toMillis(deadline - System.nanoTime());
        return Math.max(min, Math.min(max, left));
    }

    static String nodeText(Node n) {
        return n == null ? "none" : n.id() + "@" + n.host() + ":" + n.port();
    }

    // ------------------------------------------------------------- utilities

    /** Remembers the first error seen by any thread. */
    static final class ErrorSink {
        private final AtomicReference<String> first = new AtomicReference<>();
        void offer(Throwable t) { offer(describe(t)); }
        void offer(String s) {
            if (first.compareAndSet(null, s)) System.err.println("first error: " + s);
        }
        String get() { return first.get(); }
    }

    static Map<String, Object> base(String op) {
        Map<String, Object> j = new LinkedHashMap<>();
        j.put("client", "java");
        j.put("op", op);
        return j;
    }

    static long elapsedMs(long startNanos) {
        return TimeUnit.NANOSECONDS.toMillis(System.nanoTime() - startNanos);
    }

    static Throwable unwrap(Throwable t) {
        while ((t instanceof ExecutionException || t instanceof java.util.concurrent.CompletionException)
                && t.getCause() != null) {
            t = t.getCause();
        }
        return t;
    }

    static String describe(Throwable t) {
        t = unwrap(t);
        if (t instanceof TimeoutException) return "TimeoutException: timed out waiting for the result";
        String msg = t.getMessage();
        return t.getClass().getSimpleName() + (msg == null ? "" : ": " + msg);
    }

    static void sleepQuietly(long ms) {
        try {
            Thread.sleep(ms);
        } catch (InterruptedException e) {
            Thread.currentThread().interrupt();
        }
    }

    static List<Object> toList(long[] xs) {
        List<Object> l = new ArrayList<>();
        for (long x : xs) l.add(x);
        return l;
    }

    // ------------------------------------------------------------------- args

    /** Hand-rolled "--name value" / "--name=value" parser; --prop may repeat. */
    static final class Args {
        final Map<String, String> opts = new HashMap<>();
        final List<String> props = new ArrayList<>();

        static Args parse(String[] argv) throws UsageException {
            Args a = new Args();
            for (int i = 1; i < argv.length; i++) {
                String s = argv[i];
                if (!s.startsWith("--") || s.length() == 2) throw new UsageException("unexpected argument '" + s + "'");
                String name;
                String value;
                int eq = s.indexOf('=');
                if (eq > 0) {
                    name = s.substring(2, eq);
                    value = s.substring(eq + 1);
                } else {
                    name = s.substring(2);
                    if (i + 1 >= argv.length) throw new UsageException("missing value for --" + name);
                    value = argv[++i];
                }
                if (name.equals("prop")) {
                    if (value.indexOf('=') <= 0) throw new UsageException("--prop wants key=value, got '" + value + "'");
                    a.props.add(value);
                } else if (a.opts.put(name, value) != null) {
                    throw new UsageException("--" + name + " given twice");
                }
            }
            return a;
        }

        /** Rejects options the subcommand does not know, so typos do not pass silently. */
        void allow(String... names) throws UsageException {
            Set<String> ok = new HashSet<>(List.of(names));
            for (String n : opts.keySet()) {
                if (!ok.contains(n)) throw new UsageException("unknown option --" + n);
            }
        }

        void applyProps(Properties p) {
            for (String kv : props) {
                int eq = kv.indexOf('=');
                p.put(kv.substring(0, eq), kv.substring(eq + 1));
            }
        }

        String req(String name) throws UsageException {
            String v = opts.get(name);
            if (v == null || v.isEmpty()) throw new UsageException("--" + name + " is required");
            return v;
        }

        String str(String name, String dflt) {
            return opts.getOrDefault(name, dflt);
        }

        long longReq(String name) throws UsageException {
            return parseLong(name, req(name));
        }

        long longOpt(String name, long dflt) throws UsageException {
            String v = opts.get(name);
            return v == null ? dflt : parseLong(name, v);
        }

        double doubleOpt(String name, double dflt) throws UsageException {
            String v = opts.get(name);
            if (v == null) return dflt;
            try {
                return Double.parseDouble(v);
            } catch (NumberFormatException e) {
                throw new UsageException("--" + name + " wants a number, got '" + v + "'");
            }
        }

        boolean bool(String name, boolean dflt) throws UsageException {
            String v = opts.get(name);
            if (v == null) return dflt;
            if (v.equalsIgnoreCase("true")) return true;
            if (v.equalsIgnoreCase("false")) return false;
            throw new UsageException("--" + name + " wants true|false, got '" + v + "'");
        }

        private static long parseLong(String name, String v) throws UsageException {
            try {
                long x = Long.parseLong(v);
                if (x < 0) throw new UsageException("--" + name + " must not be negative");
                return x;
            } catch (NumberFormatException e) {
                throw new UsageException("--" + name + " wants an integer, got '" + v + "'");
            }
        }
    }

    // ------------------------------------------------------------------- json

    /** Minimal JSON writer for maps, lists, strings, numbers, booleans and null. */
    static final class Json {
        static String write(Object o) {
            StringBuilder sb = new StringBuilder();
            write(sb, o);
            return sb.toString();
        }

        @SuppressWarnings("unchecked")
        private static void write(StringBuilder sb, Object o) {
            if (o == null) {
                sb.append("null");
            } else if (o instanceof String) {
                string(sb, (String) o);
            } else if (o instanceof Double || o instanceof Float) {
                double d = ((Number) o).doubleValue();
                if (Double.isFinite(d)) sb.append(d); else sb.append("null");
            } else if (o instanceof Number || o instanceof Boolean) {
                sb.append(o);
            } else if (o instanceof Map) {
                sb.append('{');
                boolean first = true;
                for (Map.Entry<String, Object> e : ((Map<String, Object>) o).entrySet()) {
                    if (!first) sb.append(',');
                    first = false;
                    string(sb, e.getKey());
                    sb.append(':');
                    write(sb, e.getValue());
                }
                sb.append('}');
            } else if (o instanceof List) {
                sb.append('[');
                boolean first = true;
                for (Object x : (List<Object>) o) {
                    if (!first) sb.append(',');
                    first = false;
                    write(sb, x);
                }
                sb.append(']');
            } else {
                string(sb, o.toString());
            }
        }

        private static void string(StringBuilder sb, String s) {
            sb.append('"');
            for (int i = 0; i < s.length(); i++) {
                char c = s.charAt(i);
                switch (c) {
                    case '"': sb.append("\\\""); break;
                    case '\\': sb.append("\\\\"); break;
                    case '\n': sb.append("\\n"); break;
                    case '\r': sb.append("\\r"); break;
                    case '\t': sb.append("\\t"); break;
                    default:
                        if (c < 0x20) sb.append(String.format("\\u%04x", (int) c));
                        else sb.append(c);
                }
            }
            sb.append('"');
        }
    }
}
