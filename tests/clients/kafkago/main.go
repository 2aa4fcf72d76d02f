// Command kafkago-driver drives segmentio/kafka-go against a bootstrap address
// (normally a Switchyard proxy), so the Rust integration tests can check a client
// whose defaults differ from the Java client's, librdkafka's and franz-go's: its
// Writer keeps one metadata cache filled by Metadata requests for all topics,
// refreshed every few seconds, and is not idempotent; its Reader looks up each
// partition's leader on a fresh connection.
//
// Every run prints exactly one JSON object as the last line of stdout, with the
// field names of the franz-go driver; all logging goes to stderr. The exit code
// is 0 whenever the run was carried out, even if the counts reveal problems
// (judging them is the tests' job); 2 for usage errors, 1 for fatal ones.
//
// Subcommands:
//
//	produce -bootstrap B -topic T[,T2...] -count N -keys K [-rate R] [-key-prefix k]
//	        [-timeout-s 120] [-client-id ID] [-retried-file PATH]
//	consume -bootstrap B -topic T[,T2...] -group G -members M -expect N [-timeout-s 120]
//	        [-client-id ID] [-seen-file PATH]
//
// Common: [-log-level none|error|warn|info|debug]: kafka-go's error log at
// error and warn, its full log at info and debug (stderr; default warn).
//
// Records are keyed `<prefix>-<i % keys>` with value `<key>|<i / keys>`, record i
// to topics[i % n], like the other drivers.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
)

const clientName = "kafka-go"

var emitOnce sync.Once

// emit writes v as the single JSON result line; later calls are ignored.
func emit(v any) {
	emitOnce.Do(func() {
		b, err := json.Marshal(v)
		if err != nil {
			b = []byte(fmt.Sprintf(`{"client":%q,"fatal":%q}`, clientName, "json: "+err.Error()))
		}
		os.Stdout.Write(append(b, '\n'))
	})
}

func die(op string, code int, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	log.Printf("fatal: %s", msg)
	emit(map[string]any{"client": clientName, "op": op, "fatal": msg})
	os.Exit(code)
}

func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

type firstError struct {
	mu  sync.Mutex
	msg string
}

func (f *firstError) set(msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.msg == "" {
		f.msg = msg
	}
}

func (f *firstError) get() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.msg
}

type commonFlags struct {
	bootstrap string
	topic     string
	timeoutS  int
	logLevel  string
	clientID  string
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.bootstrap, "bootstrap", "", "comma-separated host:port list (required)")
	fs.StringVar(&c.topic, "topic", "", "topic name, or a comma-separated list (required)")
	fs.IntVar(&c.timeoutS, "timeout-s", 120, "upper bound on the whole run, in seconds")
	fs.StringVar(&c.logLevel, "log-level", "warn", "none|error|warn|info|debug")
	// Empty keeps kafka-go's own default, "<program>@<host> (github.com/segmentio/kafka-go)",
	// which a producer and a consumer started from one binary on one host share.
	fs.StringVar(&c.clientID, "client-id", "", "client id (default: kafka-go's)")
}

func (c *commonFlags) validate() string {
	switch {
	case c.bootstrap == "":
		return "-bootstrap is required"
	case c.topic == "":
		return "-topic is required"
	case c.timeoutS <= 0:
		return "-timeout-s must be > 0"
	}
	switch c.logLevel {
	case "none", "error", "warn", "info", "debug":
	default:
		return "-log-level must be none|error|warn|info|debug"
	}
	return ""
}

func (c *commonFlags) timeout() time.Duration { return time.Duration(c.timeoutS) * time.Second }

func (c *commonFlags) id() string {
	if c.clientID != "" {
		return c.clientID
	}
	return kafka.DefaultClientID
}

// loggers returns kafka-go's (info, error) loggers for the log level; nil is
// silence. extra, when set, also sees every error-log line.
func (c *commonFlags) loggers(prefix string, extra func(string, ...any)) (kafka.Logger, kafka.Logger) {
	std := log.New(os.Stderr, prefix+" ", log.Lmicroseconds)
	var info, errl kafka.Logger
	if c.logLevel == "info" || c.logLevel == "debug" {
		info = kafka.LoggerFunc(std.Printf)
	}
	showErrors := c.logLevel != "none"
	errl = kafka.LoggerFunc(func(format string, args ...any) {
		if extra != nil {
			extra(format, args...)
		}
		if showErrors {
			std.Printf(format, args...)
		}
	})
	return info, errl
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func startWatchdog(op string, timeout time.Duration) {
	grace := 30 * time.Second
	go func() {
		time.Sleep(timeout + grace)
		die(op, 1, "watchdog: run exceeded -timeout-s plus %s grace", grace)
	}()
}

func parseFlags(op string, fs *flag.FlagSet, args []string) {
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		die(op, 2, "usage: %v", err)
	}
	if fs.NArg() > 0 {
		die(op, 2, "usage: unexpected arguments %v", fs.Args())
	}
}

func main() {
	log.SetOutput(os.Stderr)
	log.SetFlags(log.Lmicroseconds)
	if len(os.Args) < 2 {
		die("", 2, "usage: kafkago-driver produce|consume [flags]")
	}
	switch os.Args[1] {
	case "produce":
		runProduce(os.Args[2:])
	case "consume":
		runConsume(os.Args[2:])
	default:
		die(os.Args[1], 2, "usage: unknown subcommand %q", os.Args[1])
	}
}

// ---------------------------------------------------------------------------
// produce

// topicView is what the writer's metadata cache showed for one topic over the
// run: how many times it was listed in one answer (more than once is a broken
// merge), its partition counts and the leaders of its partitions.
type topicView struct {
	MaxListed  int     `json:"max_listed"`
	Partitions []int   `json:"partitions"`
	Leaders    []int   `json:"leaders"`
	FirstSeen  *int64  `json:"first_seen_ms"`
	Errors     []int16 `json:"errors,omitempty"`
}

type metadataView struct {
	Samples      int     `json:"samples"`
	Failed       int     `json:"failed"`
	FirstError   *string `json:"first_error"`
	MaxTopicList int     `json:"max_topics_listed"`
	// Names listed more than once in one answer, of any topic.
	Repeated []string              `json:"repeated"`
	Topics   map[string]*topicView `json:"topics"`
}

type produceResult struct {
	Client         string       `json:"client"`
	Op             string       `json:"op"`
	Topic          string       `json:"topic"`
	ClientID       string       `json:"client_id"`
	Sent           int64        `json:"sent"`
	Acked          int64        `json:"acked"`
	Errors         int64        `json:"errors"`
	FirstError     *string      `json:"first_error"`
	Retries        int64        `json:"retries"`
	AttemptErrors  int64        `json:"attempt_errors"`
	RetriedBatches int64        `json:"retried_batches"`
	RetriedRecords int64        `json:"retried_records"`
	AttemptError   *string      `json:"first_attempt_error"`
	Metadata       metadataView `json:"metadata"`
	Fatal          *string      `json:"fatal"`
	ElapsedMs      int64        `json:"elapsed_ms"`
}

// retryBook tells which records were in a batch kafka-go sent more than once.
// The writer runs one goroutine per partition that sends one batch at a time,
// logs each failed attempt on the error logger, then calls Completion for that
// batch, so a failed attempt logged for a partition belongs to the next batch
// completed on it.
type retryBook struct {
	mu       sync.Mutex
	pending  map[string]bool // "topic/partition" with a failed attempt not yet completed
	attempts int64
	first    firstError
	batches  int64
	values   []string // values of retried or failed batches
}

func (b *retryBook) onErrorLog(format string, args ...any) {
	if !strings.HasPrefix(format, "error writing messages to") || len(args) < 2 {
		return
	}
	key := fmt.Sprintf("%v/%v", args[0], args[1])
	b.mu.Lock()
	b.pending[key] = true
	b.attempts++
	b.mu.Unlock()
	b.first.set(fmt.Sprintf(format, args...))
}

// onCompletion returns whether the batch was retried. A failed batch carries no
// partition (kafka-go fills it in from the answer), so its records count as
// uncertain whatever the log said.
func (b *retryBook) onCompletion(msgs []kafka.Message, err error) {
	if len(msgs) == 0 {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	retried := err != nil
	if err == nil {
		key := fmt.Sprintf("%v/%v", msgs[0].Topic, msgs[0].Partition)
		retried = b.pending[key]
		delete(b.pending, key)
	}
	if !retried {
		return
	}
	b.batches++
	for _, m := range msgs {
		b.values = append(b.values, string(m.Value))
	}
}

func runProduce(args []string) {
	const op = "produce"
	var (
		c           commonFlags
		count, keys int64
		rate        float64
		keyPrefix   string
		retriedFile string
	)
	fs := flag.NewFlagSet(op, flag.ContinueOnError)
	c.register(fs)
	fs.Int64Var(&count, "count", 0, "number of records (required, > 0)")
	fs.Int64Var(&keys, "keys", 1, "number of distinct keys")
	fs.Float64Var(&rate, "rate", 0, "records per second, 0 = unlimited")
	fs.StringVar(&keyPrefix, "key-prefix", "k", "key prefix; key = <prefix>-<i % keys>")
	fs.StringVar(&retriedFile, "retried-file", "", "write the values of every batch sent more than once here")
	parseFlags(op, fs, args)
	if msg := c.validate(); msg != "" {
		die(op, 2, "usage: %s", msg)
	}
	if count <= 0 || keys <= 0 || rate < 0 {
		die(op, 2, "usage: -count and -keys must be > 0, -rate >= 0")
	}

	startWatchdog(op, c.timeout())
	start := time.Now()
	res := produceResult{Client: clientName, Op: op, Topic: c.topic, ClientID: c.id()}
	topics := splitList(c.topic)

	book := &retryBook{pending: map[string]bool{}}
	var (
		mu            sync.Mutex
		acked, failed int64
		first         firstError
	)
	info, errl := c.loggers("[kafka-go writer]", book.onErrorLog)
	transport := &kafka.Transport{ClientID: c.id()}
	w := &kafka.Writer{
		Addr:         kafka.TCP(splitList(c.bootstrap)...),
		Balancer:     &kafka.Hash{},
		RequiredAcks: kafka.RequireAll,
		// Async with a completion callback: a synchronous WriteMessages waits for
		// its batch, so paced single records would each wait the batch timeout.
		Async:        true,
		BatchTimeout: 10 * time.Millisecond,
		Transport:    transport,
		Logger:       info,
		ErrorLogger:  errl,
		Completion: func(msgs []kafka.Message, err error) {
			book.onCompletion(msgs, err)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed += int64(len(msgs))
				first.set(err.Error())
				return
			}
			acked += int64(len(msgs))
		},
	}

	// What the writer's metadata cache holds, sampled twice a second: the
	// Client shares the writer's transport, whose cache answers Metadata.
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout())
	defer cancel()
	md := &metadataView{Topics: map[string]*topicView{}, Repeated: []string{}}
	for _, t := range topics {
		md.Topics[t] = &topicView{}
	}
	sampleDone := make(chan struct{})
	stopSampling := make(chan struct{})
	go func() {
		defer close(sampleDone)
		client := &kafka.Client{Addr: w.Addr, Transport: transport, Timeout: 5 * time.Second}
		tick := time.NewTicker(500 * time.Millisecond)
		defer tick.Stop()
		for {
			sampleMetadata(ctx, client, md, start)
			select {
			case <-tick.C:
			case <-stopSampling:
				// What the cache held when the last batch completed.
				sampleMetadata(ctx, client, md, start)
				return
			case <-ctx.Done():
				return
			}
		}
	}()

	var sent int64
	for i := int64(0); i < count && ctx.Err() == nil; i++ {
		if rate > 0 {
			due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
				}
			}
		}
		key := fmt.Sprintf("%s-%d", keyPrefix, i%keys)
		value := key + "|" + strconv.FormatInt(i/keys, 10)
		msg := kafka.Message{Topic: topics[i%int64(len(topics))], Key: []byte(key), Value: []byte(value)}
		if err := w.WriteMessages(ctx, msg); err != nil {
			// Async: only an early refusal (unknown topic in the cache, closed
			// writer) lands here; the record is not sent.
			mu.Lock()
			failed++
			first.set("write: " + err.Error())
			mu.Unlock()
		}
		sent++
	}
	// Every batch completes (or fails) before the cache is sampled a last time;
	// Close, which flushes what is left, also drops the transport's cache.
	for waited := time.Duration(0); waited < 60*time.Second; waited += 10 * time.Millisecond {
		mu.Lock()
		done := acked+failed >= sent
		mu.Unlock()
		if done {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	close(stopSampling)
	<-sampleDone
	closed := make(chan error, 1)
	go func() { closed <- w.Close() }()
	select {
	case err := <-closed:
		if err != nil {
			log.Printf("produce: close: %v", err)
		}
	case <-time.After(60 * time.Second):
		log.Printf("produce: close did not return in 60 s")
	}
	stats := w.Stats()

	mu.Lock()
	res.Sent, res.Acked, res.Errors = sent, acked, failed
	mu.Unlock()
	if pending := res.Sent - res.Acked - res.Errors; pending > 0 {
		res.Errors += pending
		first.set(fmt.Sprintf("%d records never completed", pending))
	}
	res.FirstError = strPtr(first.get())
	book.mu.Lock()
	res.AttemptErrors = book.attempts
	res.RetriedBatches = book.batches
	res.RetriedRecords = int64(len(book.values))
	values := append([]string(nil), book.values...)
	book.mu.Unlock()
	res.AttemptError = strPtr(book.first.get())
	// Stats are counted since the last call; this is the only one.
	res.Retries = stats.Retries
	res.Metadata = *md
	if retriedFile != "" {
		if err := writeLines(retriedFile, values); err != nil {
			msg := "retried-file: " + err.Error()
			res.Fatal = &msg
		}
	}
	res.ElapsedMs = time.Since(start).Milliseconds()
	emit(res)
}

func sampleMetadata(ctx context.Context, client *kafka.Client, md *metadataView, start time.Time) {
	// Topics nil: the whole cached answer to the transport's all-topics request.
	r, err := client.Metadata(ctx, &kafka.MetadataRequest{})
	md.Samples++
	if err != nil {
		md.Failed++
		if md.FirstError == nil {
			md.FirstError = strPtr(err.Error())
		}
		return
	}
	if len(r.Topics) > md.MaxTopicList {
		md.MaxTopicList = len(r.Topics)
	}
	listed := map[string]int{}
	for _, t := range r.Topics {
		listed[t.Name]++
		v := md.Topics[t.Name]
		if v == nil {
			continue
		}
		if v.FirstSeen == nil {
			ms := time.Since(start).Milliseconds()
			v.FirstSeen = &ms
		}
		if t.Error != nil {
			var ke kafka.Error
			if errors.As(t.Error, &ke) {
				v.Errors = addInt16(v.Errors, int16(ke))
			}
		}
		v.Partitions = addInt(v.Partitions, len(t.Partitions))
		for _, p := range t.Partitions {
			v.Leaders = addInt(v.Leaders, p.Leader.ID)
		}
	}
	for name, n := range listed {
		if v := md.Topics[name]; v != nil && n > v.MaxListed {
			v.MaxListed = n
		}
		if n > 1 && !contains(md.Repeated, name) {
			md.Repeated = append(md.Repeated, name)
		}
	}
}

func contains(xs []string, x string) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func addInt(xs []int, x int) []int {
	for _, y := range xs {
		if y == x {
			return xs
		}
	}
	xs = append(xs, x)
	sort.Ints(xs)
	return xs
}

func addInt16(xs []int16, x int16) []int16 {
	for _, y := range xs {
		if y == x {
			return xs
		}
	}
	return append(xs, x)
}

// writeLines writes lines sorted, via a temp file and rename.
func writeLines(path string, lines []string) error {
	sort.Strings(lines)
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(f)
	for _, l := range lines {
		bw.WriteString(l)
		bw.WriteByte('\n')
	}
	if err := bw.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// ---------------------------------------------------------------------------
// consume

type consumeResult struct {
	Client          string           `json:"client"`
	Op              string           `json:"op"`
	Topic           string           `json:"topic"`
	Group           string           `json:"group"`
	ClientID        string           `json:"client_id"`
	Consumed        int64            `json:"consumed"`
	Unique          int64            `json:"unique"`
	Duplicates      int64            `json:"duplicates"`
	OrderViolations int64            `json:"order_violations"`
	Missing         int64            `json:"missing"`
	Errors          int64            `json:"errors"`
	FirstError      *string          `json:"first_error"`
	Fatal           *string          `json:"fatal"`
	ElapsedMs       int64            `json:"elapsed_ms"`
	PerMember       []int64          `json:"per_member"`
	PerTopic        map[string]int64 `json:"per_topic"`
}

// tally is shared by all members.
type tally struct {
	mu         sync.Mutex
	seen       map[string]struct{}
	highest    map[string]int64
	perTopic   map[string]int64
	consumed   int64
	duplicates int64
	orderViol  int64
	errors     int64
	first      firstError
}

func splitValue(v string) (string, int64, bool) {
	i := strings.LastIndexByte(v, '|')
	if i < 0 {
		return "", 0, false
	}
	seq, err := strconv.ParseInt(v[i+1:], 10, 64)
	if err != nil {
		return "", 0, false
	}
	return v[:i], seq, true
}

func (t *tally) markSeen(key string, seq int64) {
	t.seen[key+"|"+strconv.FormatInt(seq, 10)] = struct{}{}
	if h, ok := t.highest[key]; !ok || seq > h {
		t.highest[key] = seq
	}
}

func (t *tally) record(m kafka.Message) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.consumed++
	t.perTopic[m.Topic]++
	v := string(m.Value)
	key, seq, ok := splitValue(v)
	if !ok || key != string(m.Key) {
		t.errors++
		t.first.set(fmt.Sprintf("malformed record at %s/%d@%d: key=%q value=%q", m.Topic, m.Partition, m.Offset, m.Key, m.Value))
		return
	}
	if _, dup := t.seen[v]; dup {
		t.duplicates++
		return
	}
	if h, ok := t.highest[key]; ok && seq < h {
		t.orderViol++
	}
	t.markSeen(key, seq)
}

func (t *tally) addError(msg string) {
	t.mu.Lock()
	t.errors++
	t.mu.Unlock()
	t.first.set(msg)
}

func (t *tally) unique() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return int64(len(t.seen))
}

func loadSeen(t *tally, path string) error {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		key, seq, ok := splitValue(line)
		if !ok {
			return fmt.Errorf("seen-file %s: bad line %q", path, line)
		}
		t.markSeen(key, seq)
	}
	return sc.Err()
}

func runConsume(args []string) {
	const op = "consume"
	var (
		c        commonFlags
		group    string
		members  int
		expect   int64
		seenFile string
	)
	fs := flag.NewFlagSet(op, flag.ContinueOnError)
	c.register(fs)
	fs.StringVar(&group, "group", "", "consumer group id (required)")
	fs.IntVar(&members, "members", 1, "number of group members (readers) to run")
	fs.Int64Var(&expect, "expect", 0, "stop once this many unique values are seen (required, > 0)")
	fs.StringVar(&seenFile, "seen-file", "", "load/save the seen values across runs")
	parseFlags(op, fs, args)
	if msg := c.validate(); msg != "" {
		die(op, 2, "usage: %s", msg)
	}
	if group == "" || members <= 0 || expect <= 0 {
		die(op, 2, "usage: -group required, -members and -expect must be > 0")
	}

	startWatchdog(op, c.timeout())
	start := time.Now()
	t := &tally{seen: map[string]struct{}{}, highest: map[string]int64{}, perTopic: map[string]int64{}}
	if seenFile != "" {
		if err := loadSeen(t, seenFile); err != nil {
			die(op, 1, "%v", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout())
	defer cancel()
	// Stop every member once the goal is met.
	go func() {
		for ctx.Err() == nil {
			if t.unique() >= expect {
				cancel()
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()

	perMember := make([]int64, members)
	var wg sync.WaitGroup
	for m := 0; m < members; m++ {
		info, errl := c.loggers(fmt.Sprintf("[kafka-go reader %d]", m), nil)
		cfg := kafka.ReaderConfig{
			Brokers:           splitList(c.bootstrap),
			GroupID:           group,
			GroupTopics:       splitList(c.topic),
			Dialer:            &kafka.Dialer{ClientID: c.id(), Timeout: 10 * time.Second, DualStack: true},
			StartOffset:       kafka.FirstOffset,
			MaxWait:           500 * time.Millisecond,
			HeartbeatInterval: time.Second,
			SessionTimeout:    10 * time.Second,
			RebalanceTimeout:  10 * time.Second,
			Logger:            info,
			ErrorLogger:       errl,
		}
		r := kafka.NewReader(cfg)
		wg.Add(1)
		go func(idx int, r *kafka.Reader) {
			defer wg.Done()
			defer r.Close()
			for ctx.Err() == nil {
				msg, err := r.FetchMessage(ctx)
				if err != nil {
					// The reader keeps retrying on its own (a partition whose
					// leader refuses it is looked up again); FetchMessage only
					// reports each failure. Count it and go on until the deadline.
					if ctx.Err() == nil {
						t.addError(fmt.Sprintf("member %d: fetch: %v", idx, err))
						time.Sleep(100 * time.Millisecond)
					}
					continue
				}
				t.record(msg)
				t.mu.Lock()
				perMember[idx]++
				t.mu.Unlock()
				// Synchronous commit (CommitInterval 0) of what was processed.
				if err := r.CommitMessages(ctx, msg); err != nil && ctx.Err() == nil {
					t.addError(fmt.Sprintf("member %d: commit: %v", idx, err))
				}
			}
		}(m, r)
	}
	wg.Wait()

	t.mu.Lock()
	res := consumeResult{
		Client: clientName, Op: op, Topic: c.topic, Group: group, ClientID: c.id(),
		Consumed: t.consumed, Unique: int64(len(t.seen)), Duplicates: t.duplicates,
		OrderViolations: t.orderViol, Errors: t.errors, PerMember: perMember,
		PerTopic: t.perTopic,
	}
	lines := make([]string, 0, len(t.seen))
	for v := range t.seen {
		lines = append(lines, v)
	}
	t.mu.Unlock()
	if res.Unique < expect {
		res.Missing = expect - res.Unique
	}
	res.FirstError = strPtr(t.first.get())
	if seenFile != "" {
		if err := writeLines(seenFile, lines); err != nil {
			msg := "seen-file: " + err.Error()
			res.Fatal = &msg
		}
	}
	res.ElapsedMs = time.Since(start).Milliseconds()
	emit(res)
}
