// Command franz-driver drives the franz-go Kafka client against a bootstrap
// address (normally a Switchyard proxy) so that the Rust integration tests
// can check how a real, non-JVM client behaves through the proxy.
//
// Every run prints exactly one JSON object as the last line of stdout; all
// logging goes to stderr. The exit code is 0 whenever the requested run was
// carried out, even if the counts in the JSON reveal problems: judging the
// counts is the Rust tests' job. Non-zero means a usage error or a fatal
// crash, and even then a JSON line with "fatal" set is printed when possible.
//
// Subcommands:
//
//	produce -bootstrap B -topic T -count N -keys K [-idempotent=true] [-acks all]
//	        [-linger-ms 5] [-rate R] [-key-prefix k] [-timeout-s 120]
//	consume -bootstrap B -topic T -group G -members M -expect N [-timeout-s 120]
//	        [-seen-file PATH] [-stop-after X] [-balancer range|cooperative-sticky]
//	        [-reset earliest|latest] [-heartbeat-ms 1000]
//	admin   -bootstrap B -topic T [-partitions 6] [-replication 3] [-timeout-s 120]
//
// Common to all: [-log-level none|error|warn|info|debug] (franz-go's own log,
// written to stderr; default info).
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

const clientName = "franz-go"

// exitUsage is the exit code for bad command lines; exitFatal for crashes and
// for runs that could not be carried out at all (e.g. the watchdog fired).
const (
	exitUsage = 2
	exitFatal = 1
)

// emitOnce guarantees the "exactly one JSON line" contract even when the
// watchdog and the normal path race to report.
var emitOnce sync.Once

// emit writes v as the single JSON result line on stdout. Later calls are
// ignored so that whichever path reports first wins.
func emit(v any) {
	emitOnce.Do(func() {
		b, err := json.Marshal(v)
		if err != nil {
			// Should never happen with our plain structs; still honour the
			// one-line contract with a hand-written fallback.
			b = []byte(fmt.Sprintf(`{"client":%q,"fatal":%q}`, clientName, "json: "+err.Error()))
		}
		os.Stdout.Write(append(b, '\n'))
	})
}

// fatalResult is what we print when we cannot produce the op's normal result.
type fatalResult struct {
	Client string `json:"client"`
	Op     string `json:"op"`
	Fatal  string `json:"fatal"`
}

func die(op string, code int, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	log.Printf("fatal: %s", msg)
	emit(fatalResult{Client: clientName, Op: op, Fatal: msg})
	os.Exit(code)
}

// strPtr turns "" into JSON null and anything else into a string, matching
// the `"first_error": "..." | null` shape the tests expect.
func strPtr(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// firstError remembers the first error message seen by any goroutine.
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

// commonFlags are accepted by every subcommand.
type commonFlags struct {
	bootstrap string
	topic     string
	timeoutS  int
	logLevel  string
}

func (c *commonFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.bootstrap, "bootstrap", "", "comma-separated host:port list (required)")
	fs.StringVar(&c.topic, "topic", "", "topic name (required)")
	fs.IntVar(&c.timeoutS, "timeout-s", 120, "upper bound on the whole run, in seconds")
	fs.StringVar(&c.logLevel, "log-level", "info", "franz-go log level on stderr: none|error|warn|info|debug")
}

// validate checks the common flags and returns a usage message or "".
func (c *commonFlags) validate() string {
	switch {
	case c.bootstrap == "":
		return "-bootstrap is required"
	case c.topic == "":
		return "-topic is required"
	case c.timeoutS <= 0:
		return "-timeout-s must be > 0"
	}
	if _, ok := parseLogLevel(c.logLevel); !ok {
		return "-log-level must be none|error|warn|info|debug"
	}
	return ""
}

func (c *commonFlags) timeout() time.Duration { return time.Duration(c.timeoutS) * time.Second }

func parseLogLevel(s string) (kgo.LogLevel, bool) {
	switch strings.ToLower(s) {
	case "none":
		return kgo.LogLevelNone, true
	case "error":
		return kgo.LogLevelError, true
	case "warn":
		return kgo.LogLevelWarn, true
	case "info":
		return kgo.LogLevelInfo, true
	case "debug":
		return kgo.LogLevelDebug, true
	}
	return kgo.LogLevelNone, false
}

// baseOpts are the client options every subcommand shares. We deliberately do
// NOT pin kgo.MaxVersions/MinVersions: the point of the driver is to let
// franz-go negotiate versions via ApiVersions exactly as it would in
// production, so the proxy sees the client's real request versions.
func (c *commonFlags) baseOpts(clientID string) []kgo.Opt {
	lvl, _ := parseLogLevel(c.logLevel)
	prefix := clientID
	return []kgo.Opt{
		kgo.SeedBrokers(splitList(c.bootstrap)...),
		kgo.ClientID(clientID),
		kgo.WithLogger(kgo.BasicLogger(os.Stderr, lvl, func() string {
			return time.Now().Format("15:04:05.000 ") + "[" + prefix + "] "
		})),
	}
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

// startWatchdog is the last line of defence for "never hang": if the run is
// still going well past its own timeout (e.g. a Close blocked on a broken
// connection), report a fatal result and exit.
func startWatchdog(op string, timeout time.Duration) {
	grace := 30 * time.Second
	go func() {
		time.Sleep(timeout + grace)
		die(op, exitFatal, "watchdog: run exceeded -timeout-s plus %s grace", grace)
	}()
}

// closeBounded closes a client but gives up after d, so that a wedged
// connection cannot stall the driver past its timeout.
func closeBounded(name string, d time.Duration, closeFn func()) {
	done := make(chan struct{})
	go func() {
		closeFn()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(d):
		log.Printf("%s: close did not finish within %s; abandoning it", name, d)
	}
}

// parseFlags parses a subcommand's flags. Go's flag package accepts both
// -flag and --flag, so both spellings work.
func parseFlags(op string, fs *flag.FlagSet, args []string) {
	fs.SetOutput(os.Stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			die(op, exitUsage, "help requested")
		}
		die(op, exitUsage, "usage: %v", err)
	}
	if fs.NArg() > 0 {
		die(op, exitUsage, "usage: unexpected arguments %q", fs.Args())
	}
}

func main() {
	log.SetOutput(os.Stderr)
	log.SetFlags(log.Ltime | log.Lmicroseconds)

	if len(os.Args) < 2 {
		die("", exitUsage, "usage: franz-driver produce|consume|admin [flags]")
	}
	op, args := os.Args[1], os.Args[2:]

	// A panic anywhere on the main goroutine still yields a JSON line.
	defer func() {
		if r := recover(); r != nil {
			die(op, exitFatal, "panic: %v", r)
		}
	}()

	switch op {
	case "produce":
		runProduce(args)
	case "consume":
		runConsume(args)
	case "admin":
		runAdmin(args)
	default:
		die(op, exitUsage, "usage: unknown subcommand %q (want produce|consume|admin)", op)
	}
}

// ---------------------------------------------------------------------------
// produce

type produceResult struct {
	Client     string  `json:"client"`
	Op         string  `json:"op"`
	Topic      string  `json:"topic"`
	Sent       int64   `json:"sent"`
	Acked      int64   `json:"acked"`
	Errors     int64   `json:"errors"`
	FirstError *string `json:"first_error"`
	Fatal      *string `json:"fatal"`
	ElapsedMs  int64   `json:"elapsed_ms"`
}

func runProduce(args []string) {
	const op = "produce"
	var (
		c          commonFlags
		count      int64
		keys       int64
		idempotent bool
		acks       string
		lingerMs   int
		rate       float64
		keyPrefix  string
	)
	fs := flag.NewFlagSet(op, flag.ContinueOnError)
	c.register(fs)
	fs.Int64Var(&count, "count", 0, "number of records to produce (required, > 0)")
	fs.Int64Var(&keys, "keys", 1, "number of distinct keys")
	fs.BoolVar(&idempotent, "idempotent", true, "use the idempotent producer (franz-go default)")
	fs.StringVar(&acks, "acks", "all", "required acks: all|-1|1|0")
	fs.IntVar(&lingerMs, "linger-ms", 5, "producer linger in ms")
	fs.Float64Var(&rate, "rate", 0, "records per second, 0 = unlimited")
	fs.StringVar(&keyPrefix, "key-prefix", "k", "key prefix; key = <prefix>-<i % keys>")
	parseFlags(op, fs, args)

	if msg := c.validate(); msg != "" {
		die(op, exitUsage, "usage: %s", msg)
	}
	if count <= 0 || keys <= 0 || lingerMs < 0 || rate < 0 {
		die(op, exitUsage, "usage: -count and -keys must be > 0, -linger-ms and -rate >= 0")
	}
	var requiredAcks kgo.Acks
	switch acks {
	case "all", "-1":
		requiredAcks = kgo.AllISRAcks()
	case "1":
		requiredAcks = kgo.LeaderAck()
	case "0":
		requiredAcks = kgo.NoAck()
	default:
		die(op, exitUsage, "usage: -acks must be all|-1|1|0")
	}
	// franz-go refuses to build an idempotent client without acks=all. Like
	// the Java client, quietly drop the (default) idempotence when a weaker
	// -acks is asked for, but reject an explicit contradiction.
	if acks != "all" && acks != "-1" && idempotent {
		explicit := false
		fs.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "idempotent" })
		if explicit {
			die(op, exitUsage, "usage: -idempotent=true requires -acks all")
		}
		log.Printf("produce: -acks %s implies a non-idempotent producer", acks)
		idempotent = false
	}

	startWatchdog(op, c.timeout())
	start := time.Now()
	res := produceResult{Client: clientName, Op: op, Topic: c.topic}
	finish := func() {
		res.ElapsedMs = time.Since(start).Milliseconds()
		emit(res)
	}

	opts := append(c.baseOpts("franz-driver-producer"),
		kgo.DefaultProduceTopic(strings.Split(c.topic, ",")[0]),
		kgo.RequiredAcks(requiredAcks),
		kgo.ProducerLinger(time.Duration(lingerMs)*time.Millisecond),
		// Let records fail rather than retry forever, so a broken proxy shows
		// up as errors in the JSON instead of a run that never ends.
		kgo.RecordDeliveryTimeout(c.timeout()),
	)
	if !idempotent {
		opts = append(opts, kgo.DisableIdempotentWrite())
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		msg := "new client: " + err.Error()
		res.Fatal = &msg
		finish()
		os.Exit(exitFatal)
	}

	ctx, cancel := context.WithTimeout(context.Background(), c.timeout())
	defer cancel()

	var (
		sent, acked, failed atomic.Int64
		first               firstError
	)
	promise := func(_ *kgo.Record, err error) {
		if err != nil {
			failed.Add(1)
			first.set(err.Error())
			return
		}
		acked.Add(1)
	}

	topics := strings.Split(c.topic, ",")
	for i := int64(0); i < count; i++ {
		if ctx.Err() != nil {
			break
		}
		// Pace against the start time rather than sleeping a fixed interval
		// per record, so the average rate holds even when Produce blocks.
		if rate > 0 {
			due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
				}
				if ctx.Err() != nil {
					break
				}
			}
		}
		key := fmt.Sprintf("%s-%d", keyPrefix, i%keys)
		seq := i / keys
		rec := &kgo.Record{Key: []byte(key), Value: []byte(key + "|" + strconv.FormatInt(seq, 10))}
		// -topic may list several topics: record i goes to topics[i % n].
		rec.Topic = topics[i%int64(len(topics))]
		sent.Add(1)
		// Produce blocks only when the client's buffer is full; the context
		// bounds that wait and fails the record if the deadline passes.
		cl.Produce(ctx, rec, promise)
	}

	if err := cl.Flush(ctx); err != nil {
		log.Printf("produce: flush: %v", err)
	}
	// Close fails anything still buffered, which fires the remaining promises
	// so that acked+errors accounts for every record we handed over.
	closeBounded("producer", 15*time.Second, cl.Close)

	res.Sent = sent.Load()
	res.Acked = acked.Load()
	res.Errors = failed.Load()
	if pending := res.Sent - res.Acked - res.Errors; pending > 0 {
		// Only possible if Close was abandoned; never report fewer outcomes
		// than records sent.
		res.Errors += pending
		first.set(fmt.Sprintf("%d records never acknowledged before timeout", pending))
	}
	res.FirstError = strPtr(first.get())
	finish()
}

// ---------------------------------------------------------------------------
// consume

type consumeResult struct {
	Client          string  `json:"client"`
	Op              string  `json:"op"`
	Topic           string  `json:"topic"`
	Group           string  `json:"group"`
	Consumed        int64   `json:"consumed"`
	Unique          int64   `json:"unique"`
	Duplicates      int64   `json:"duplicates"`
	OrderViolations int64   `json:"order_violations"`
	Missing         int64   `json:"missing"`
	Errors          int64   `json:"errors"`
	FirstError      *string `json:"first_error"`
	Fatal           *string `json:"fatal"`
	ElapsedMs       int64   `json:"elapsed_ms"`
	// PerMember is how many records each member consumed in this run; it
	// shows whether the work was actually spread across the group.
	PerMember []int64 `json:"per_member"`
}

// tally is the accounting shared by all group members. One mutex is plenty:
// the per-record work under it is a couple of map operations.
type tally struct {
	mu         sync.Mutex
	seen       map[string]struct{} // "key|seq" values seen (this run + seen-file)
	highest    map[string]int64    // highest seq seen per key
	consumed   int64               // records processed in this run
	duplicates int64
	orderViol  int64
	errors     int64
	first      firstError
}

func newTally() *tally {
	return &tally{seen: make(map[string]struct{}), highest: make(map[string]int64)}
}

// splitValue parses "<key>|<seq>". The key may itself contain '|', so split
// at the last one.
func splitValue(v string) (key string, seq int64, ok bool) {
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

// markSeen records one (key, seq) as seen without counting it as consumed;
// used for loading the seen-file.
func (t *tally) markSeen(key string, seq int64) {
	t.seen[key+"|"+strconv.FormatInt(seq, 10)] = struct{}{}
	if h, ok := t.highest[key]; !ok || seq > h {
		t.highest[key] = seq
	}
}

// record accounts one consumed record. Caller holds t.mu.
func (t *tally) record(r *kgo.Record) {
	t.consumed++
	v := string(r.Value)
	key, seq, ok := splitValue(v)
	if !ok || key != string(r.Key) {
		t.errors++
		t.first.set(fmt.Sprintf("malformed record at %s/%d@%d: key=%q value=%q",
			r.Topic, r.Partition, r.Offset, r.Key, r.Value))
		return
	}
	if _, dup := t.seen[v]; dup {
		t.duplicates++
		return
	}
	// A new record must not go backwards within its key: keys map to one
	// partition, and Kafka preserves order within a partition.
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

// loadSeen reads a seen-file ("key|seq" per line). A missing file is a fresh
// start, not an error.
func (t *tally) loadSeen(path string) error {
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

// saveSeen writes the full seen set atomically (temp file + rename), so an
// interrupted save never leaves a truncated file for the next run.
func (t *tally) saveSeen(path string) error {
	t.mu.Lock()
	lines := make([]string, 0, len(t.seen))
	for v := range t.seen {
		lines = append(lines, v)
	}
	t.mu.Unlock()
	sort.Strings(lines) // deterministic output makes debugging diffs easy

	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for _, l := range lines {
		io.WriteString(w, l)
		w.WriteByte('\n')
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// member is one group consumer. processed holds, per partition, the offset
// AFTER the last record this member has fully accounted; it is what we
// commit. We track it ourselves rather than using CommitUncommittedOffsets
// because with -stop-after we may process only part of a poll, and the
// unprocessed tail must not be committed (it has to be re-delivered on the
// next run).
type member struct {
	id        int
	cl        *kgo.Client
	consumed  int64 // records this member processed; guarded by tally.mu
	mu        sync.Mutex
	processed map[string]map[int32]kgo.EpochOffset
}

func (m *member) markProcessed(r *kgo.Record) {
	m.mu.Lock()
	defer m.mu.Unlock()
	parts := m.processed[r.Topic]
	if parts == nil {
		parts = make(map[int32]kgo.EpochOffset)
		m.processed[r.Topic] = parts
	}
	parts[r.Partition] = kgo.EpochOffset{Epoch: r.LeaderEpoch, Offset: r.Offset + 1}
}

// snapshot copies the processed offsets, restricted to the given partitions
// if only is non-nil.
func (m *member) snapshot(only map[string][]int32) map[string]map[int32]kgo.EpochOffset {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]map[int32]kgo.EpochOffset)
	for topic, parts := range m.processed {
		for p, eo := range parts {
			if only != nil && !containsPartition(only[topic], p) {
				continue
			}
			if out[topic] == nil {
				out[topic] = make(map[int32]kgo.EpochOffset)
			}
			out[topic][p] = eo
		}
	}
	return out
}

// forget drops partitions we no longer own, so a later commit from this
// member can never rewind a partition that another member now commits.
func (m *member) forget(parts map[string][]int32) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for topic, ps := range parts {
		for _, p := range ps {
			delete(m.processed[topic], p)
		}
	}
}

func containsPartition(ps []int32, p int32) bool {
	for _, x := range ps {
		if x == p {
			return true
		}
	}
	return false
}

// commit synchronously commits offsets and reports any failure.
func (m *member) commit(ctx context.Context, t *tally, offsets map[string]map[int32]kgo.EpochOffset, why string) {
	if len(offsets) == 0 {
		return
	}
	var cerr error
	m.cl.CommitOffsetsSync(ctx, offsets, func(_ *kgo.Client, _ *kmsg.OffsetCommitRequest, resp *kmsg.OffsetCommitResponse, err error) {
		if err != nil {
			cerr = err
			return
		}
		for _, tp := range resp.Topics {
			for _, pp := range tp.Partitions {
				if e := kerr.ErrorForCode(pp.ErrorCode); e != nil && cerr == nil {
					cerr = fmt.Errorf("%s[%d]: %w", tp.Topic, pp.Partition, e)
				}
			}
		}
	})
	if cerr != nil {
		msg := fmt.Sprintf("member %d: commit (%s): %v", m.id, why, cerr)
		log.Print(msg)
		t.addError(msg)
	}
}

func runConsume(args []string) {
	const op = "consume"
	var (
		c         commonFlags
		group     string
		members   int
		expect    int64
		seenFile  string
		stopAfter int64
		balancer  string
		reset     string
		// A member only learns that a rebalance started on its next
		// heartbeat; franz-go's 3 s default lets the first member to join
		// drain a whole test topic before the others get partitions.
		heartbeatMs int
	)
	fs := flag.NewFlagSet(op, flag.ContinueOnError)
	c.register(fs)
	fs.StringVar(&group, "group", "", "consumer group id (required)")
	fs.IntVar(&members, "members", 1, "number of group members (clients) to run")
	fs.Int64Var(&expect, "expect", 0, "stop once this many unique (key,seq) are seen (required, > 0)")
	fs.StringVar(&seenFile, "seen-file", "", "load/save the seen (key,seq) set to continue accounting across runs")
	fs.Int64Var(&stopAfter, "stop-after", 0, "stop after consuming this many records in this run (0 = no limit)")
	fs.StringVar(&balancer, "balancer", "range", "range|cooperative-sticky|sticky|roundrobin")
	fs.StringVar(&reset, "reset", "earliest", "offset reset when the group has no commit: earliest|latest")
	fs.IntVar(&heartbeatMs, "heartbeat-ms", 1000, "group heartbeat interval in ms")
	parseFlags(op, fs, args)

	if msg := c.validate(); msg != "" {
		die(op, exitUsage, "usage: %s", msg)
	}
	if group == "" || members <= 0 || expect <= 0 || stopAfter < 0 || heartbeatMs <= 0 {
		die(op, exitUsage, "usage: -group required, -members, -expect and -heartbeat-ms must be > 0, -stop-after >= 0")
	}
	var bal kgo.GroupBalancer
	switch balancer {
	case "range":
		bal = kgo.RangeBalancer()
	case "cooperative-sticky":
		bal = kgo.CooperativeStickyBalancer()
	case "sticky":
		bal = kgo.StickyBalancer()
	case "roundrobin":
		bal = kgo.RoundRobinBalancer()
	default:
		die(op, exitUsage, "usage: -balancer must be range|cooperative-sticky|sticky|roundrobin")
	}
	var resetOffset kgo.Offset
	switch reset {
	case "earliest":
		resetOffset = kgo.NewOffset().AtStart()
	case "latest":
		resetOffset = kgo.NewOffset().AtEnd()
	default:
		die(op, exitUsage, "usage: -reset must be earliest|latest")
	}

	startWatchdog(op, c.timeout())
	start := time.Now()
	t := newTally()
	ms := make([]*member, members)
	res := consumeResult{Client: clientName, Op: op, Topic: c.topic, Group: group}
	finish := func() {
		t.mu.Lock()
		res.Consumed = t.consumed
		res.Unique = int64(len(t.seen))
		res.Duplicates = t.duplicates
		res.OrderViolations = t.orderViol
		res.Errors = t.errors
		res.PerMember = make([]int64, members)
		for i, m := range ms {
			if m != nil {
				res.PerMember[i] = m.consumed
			}
		}
		t.mu.Unlock()
		res.Missing = max(0, expect-res.Unique)
		res.FirstError = strPtr(t.first.get())
		res.ElapsedMs = time.Since(start).Milliseconds()
		emit(res)
	}

	if seenFile != "" {
		if err := t.loadSeen(seenFile); err != nil {
			msg := "load seen-file: " + err.Error()
			res.Fatal = &msg
			finish()
			os.Exit(exitFatal)
		}
		log.Printf("consume: loaded %d seen entries from %s", len(t.seen), seenFile)
	}

	// runCtx ends the run: on timeout, or when a stop condition is met
	// (stop() cancels it so every member's blocked poll returns at once).
	runCtx, stop := context.WithTimeout(context.Background(), c.timeout())
	defer stop()
	stopIfDone := func() { // caller holds t.mu
		if int64(len(t.seen)) >= expect || (stopAfter > 0 && t.consumed >= stopAfter) {
			stop()
		}
	}
	t.mu.Lock()
	stopIfDone() // a seen-file may already cover everything
	t.mu.Unlock()

	for i := range ms {
		m := &member{id: i, processed: make(map[string]map[int32]kgo.EpochOffset)}
		opts := append(c.baseOpts(fmt.Sprintf("franz-driver-consumer-%s-%d", group, i)),
			kgo.ConsumeTopics(strings.Split(c.topic, ",")...),
			kgo.ConsumerGroup(group),
			kgo.Balancers(bal),
			kgo.ConsumeResetOffset(resetOffset),
			kgo.HeartbeatInterval(time.Duration(heartbeatMs)*time.Millisecond),
			// We commit explicitly and synchronously; autocommit would commit
			// on its own schedule and blur what "resume at committed offsets"
			// means.
			kgo.DisableAutoCommit(),
			// Rebalances wait until we have processed and committed a poll,
			// so revocation never races the processing of its records.
			kgo.BlockRebalanceOnPoll(),
			// Commit-on-revoke: persist progress for partitions we are about
			// to lose so their next owner does not re-read them.
			kgo.OnPartitionsRevoked(func(ctx context.Context, _ *kgo.Client, revoked map[string][]int32) {
				log.Printf("member %d: revoked %v", m.id, revoked)
				cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer ccancel()
				m.commit(cctx, t, m.snapshot(revoked), "on-revoke")
				m.forget(revoked)
			}),
			// Lost partitions (fatal group error) cannot be committed for: the
			// generation is gone. Just stop tracking them.
			kgo.OnPartitionsLost(func(_ context.Context, _ *kgo.Client, lost map[string][]int32) {
				log.Printf("member %d: lost %v", m.id, lost)
				m.forget(lost)
			}),
			kgo.OnPartitionsAssigned(func(_ context.Context, _ *kgo.Client, assigned map[string][]int32) {
				log.Printf("member %d: assigned %v", m.id, assigned)
			}),
		)
		cl, err := kgo.NewClient(opts...)
		if err != nil {
			for _, prev := range ms[:i] {
				prev.cl.Close()
			}
			msg := "new client: " + err.Error()
			res.Fatal = &msg
			finish()
			os.Exit(exitFatal)
		}
		m.cl = cl
		ms[i] = m
	}

	var wg sync.WaitGroup
	for _, m := range ms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			consumeLoop(runCtx, m, t, stopAfter, stopIfDone)
		}()
	}
	wg.Wait()

	if seenFile != "" {
		if err := t.saveSeen(seenFile); err != nil {
			t.addError("save seen-file: " + err.Error())
		}
	}
	finish()
}

// consumeLoop polls until runCtx ends, accounting and committing each poll,
// then commits what it processed and leaves the group.
func consumeLoop(runCtx context.Context, m *member, t *tally, stopAfter int64, stopIfDone func()) {
	for runCtx.Err() == nil {
		fetches := m.cl.PollFetches(runCtx)
		fetches.EachError(func(topic string, p int32, err error) {
			// Cancellation is how we stop, not a failure.
			if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) ||
				errors.Is(err, kgo.ErrClientClosed) {
				return
			}
			msg := fmt.Sprintf("member %d: fetch %s[%d]: %v", m.id, topic, p, err)
			log.Print(msg)
			t.addError(msg)
		})

		t.mu.Lock()
		fetches.EachRecord(func(r *kgo.Record) {
			// With -stop-after, take exactly that many records in this run;
			// the rest of the poll stays uncommitted for the next run.
			if stopAfter > 0 && t.consumed >= stopAfter {
				return
			}
			t.record(r)
			m.consumed++
			m.markProcessed(r)
		})
		stopIfDone()
		t.mu.Unlock()

		// Commit this poll before letting a rebalance proceed. Use a context
		// independent of runCtx: the final poll's commit must still happen
		// after a stop condition cancelled runCtx.
		cctx, ccancel := context.WithTimeout(context.Background(), 10*time.Second)
		m.commit(cctx, t, m.snapshot(nil), "after-poll")
		ccancel()
		m.cl.AllowRebalance()
	}

	// Leave the group explicitly (bounded) so the remaining members rebalance
	// immediately rather than after a session timeout, then close.
	lctx, lcancel := context.WithTimeout(context.Background(), 10*time.Second)
	if err := m.cl.LeaveGroupContext(lctx); err != nil && !errors.Is(err, context.Canceled) {
		log.Printf("member %d: leave group: %v", m.id, err)
	}
	lcancel()
	closeBounded(fmt.Sprintf("consumer %d", m.id), 10*time.Second, m.cl.Close)
}

// ---------------------------------------------------------------------------
// admin

type adminStep struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

type adminResult struct {
	Client    string      `json:"client"`
	Op        string      `json:"op"`
	Topic     string      `json:"topic"`
	OK        bool        `json:"ok"`
	Steps     []adminStep `json:"steps"`
	Fatal     *string     `json:"fatal"`
	ElapsedMs int64       `json:"elapsed_ms"`
}

// retryUntil calls fn until it reports done, ctx ends, or limit passes. Admin
// changes (new topic, new config, deletion) propagate asynchronously, so
// verification steps poll for a bounded time instead of checking once.
func retryUntil(ctx context.Context, limit time.Duration, fn func(context.Context) (done bool, detail string)) (bool, string) {
	ctx, cancel := context.WithTimeoutCause(ctx, limit, fmt.Errorf("not done within %s", limit))
	defer cancel()
	var detail string
	for {
		var done bool
		done, detail = fn(ctx)
		if done {
			return true, detail
		}
		select {
		case <-ctx.Done():
			return false, fmt.Sprintf("%s (gave up: %v)", detail, context.Cause(ctx))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func runAdmin(args []string) {
	const op = "admin"
	var (
		c           commonFlags
		partitions  int
		replication int
	)
	fs := flag.NewFlagSet(op, flag.ContinueOnError)
	c.register(fs)
	fs.IntVar(&partitions, "partitions", 6, "partitions for the created topic")
	fs.IntVar(&replication, "replication", 3, "replication factor for the created topic")
	parseFlags(op, fs, args)
	if msg := c.validate(); msg != "" {
		die(op, exitUsage, "usage: %s", msg)
	}
	if partitions <= 0 || replication <= 0 {
		die(op, exitUsage, "usage: -partitions and -replication must be > 0")
	}

	startWatchdog(op, c.timeout())
	start := time.Now()
	res := adminResult{Client: clientName, Op: op, Topic: c.topic, OK: true, Steps: []adminStep{}}
	step := func(name string, ok bool, detail string) {
		log.Printf("admin: %-18s ok=%v %s", name, ok, detail)
		res.Steps = append(res.Steps, adminStep{Name: name, OK: ok, Detail: detail})
		if !ok {
			res.OK = false
		}
	}

	cl, err := kgo.NewClient(c.baseOpts("franz-driver-admin")...)
	if err != nil {
		msg := "new client: " + err.Error()
		res.Fatal, res.OK = &msg, false
		res.ElapsedMs = time.Since(start).Milliseconds()
		emit(res)
		os.Exit(exitFatal)
	}
	adm := kadm.NewClient(cl)

	ctx, cancel := context.WithTimeout(context.Background(), c.timeout())
	defer cancel()
	topic := c.topic
	// Individual waits are bounded by 30 s (and by the overall timeout).
	const wait = 30 * time.Second

	// 1. Create the topic.
	if r, err := adm.CreateTopic(ctx, int32(partitions), int16(replication), nil, topic); err != nil {
		step("create_topic", false, err.Error())
	} else if r.Err != nil {
		step("create_topic", false, fmt.Sprintf("%v %s", r.Err, r.ErrMessage))
	} else {
		step("create_topic", true, fmt.Sprintf("partitions=%d replication=%d id=%s", r.NumPartitions, r.ReplicationFactor, r.ID))
	}

	// 2. The topic appears in a full topic listing.
	ok, detail := retryUntil(ctx, wait, func(ctx context.Context) (bool, string) {
		tds, err := adm.ListTopics(ctx)
		if err != nil {
			return false, err.Error()
		}
		_, found := tds[topic]
		return found, fmt.Sprintf("%d topics listed, contains %s=%v", len(tds), topic, found)
	})
	step("list_topics", ok, detail)

	// 3. Describe: right partition count and every partition has a leader.
	ok, detail = retryUntil(ctx, wait, func(ctx context.Context) (bool, string) {
		tds, err := adm.ListTopics(ctx, topic)
		if err != nil {
			return false, err.Error()
		}
		td, found := tds[topic]
		if !found || td.Err != nil {
			return false, fmt.Sprintf("not described: %v", td.Err)
		}
		leaders := make([]string, 0, len(td.Partitions))
		allLed := true
		for _, pd := range td.Partitions.Sorted() {
			if pd.Leader < 0 || pd.Err != nil {
				allLed = false
			}
			leaders = append(leaders, fmt.Sprintf("%d:%d", pd.Partition, pd.Leader))
		}
		d := fmt.Sprintf("partitions=%d leaders=[%s]", len(td.Partitions), strings.Join(leaders, " "))
		return len(td.Partitions) == partitions && allLed, d
	})
	step("describe_topic", ok, detail)

	// 4. Describe topic configs.
	retention := func(ctx context.Context) (string, int, error) {
		rcs, err := adm.DescribeTopicConfigs(ctx, topic)
		if err != nil {
			return "", 0, err
		}
		rc, err := rcs.On(topic, nil)
		if err != nil {
			return "", 0, err
		}
		if rc.Err != nil {
			return "", 0, fmt.Errorf("%v %s", rc.Err, rc.ErrMessage)
		}
		for _, cfg := range rc.Configs {
			if cfg.Key == "retention.ms" && cfg.Value != nil {
				return *cfg.Value, len(rc.Configs), nil
			}
		}
		return "", len(rc.Configs), nil
	}
	// A just-created topic reaches every broker's metadata cache asynchronously;
	// the broker answering DescribeConfigs may not know it for a moment.
	ok, detail = retryUntil(ctx, wait, func(ctx context.Context) (bool, string) {
		v, n, err := retention(ctx)
		if err != nil {
			return false, err.Error()
		}
		return n > 0, fmt.Sprintf("%d configs, retention.ms=%s", n, v)
	})
	step("describe_configs", ok, detail)

	// 5. Incrementally alter retention.ms, then verify by describing again.
	const wantRetention = "3600000"
	val := wantRetention
	if rs, err := adm.AlterTopicConfigs(ctx, []kadm.AlterConfig{{Op: kadm.SetConfig, Name: "retention.ms", Value: &val}}, topic); err != nil {
		step("alter_config", false, err.Error())
	} else if r, err := rs.On(topic, nil); err != nil {
		step("alter_config", false, err.Error())
	} else if r.Err != nil {
		step("alter_config", false, fmt.Sprintf("%v %s", r.Err, r.ErrMessage))
	} else {
		ok, detail = retryUntil(ctx, wait, func(ctx context.Context) (bool, string) {
			v, _, err := retention(ctx)
			if err != nil {
				return false, err.Error()
			}
			return v == wantRetention, "retention.ms=" + v
		})
		step("alter_config", ok, detail)
	}

	// 6. Produce 10 records so offsets have something to show.
	const nRecords = 10
	pctx, pcancel := context.WithTimeout(ctx, wait)
	var recs []*kgo.Record
	for i := 0; i < nRecords; i++ {
		recs = append(recs, &kgo.Record{Topic: topic, Key: []byte(fmt.Sprintf("a-%d", i)), Value: []byte(fmt.Sprintf("a-%d|0", i))})
	}
	if err := cl.ProduceSync(pctx, recs...).FirstErr(); err != nil {
		step("produce_10", false, err.Error())
	} else {
		step("produce_10", true, fmt.Sprintf("%d records", nRecords))
	}
	pcancel()

	// 7. Start offsets are 0 and end offsets sum to the records produced.
	ok, detail = retryUntil(ctx, wait, func(ctx context.Context) (bool, string) {
		starts, err := adm.ListStartOffsets(ctx, topic)
		if err != nil {
			return false, "start: " + err.Error()
		}
		ends, err := adm.ListEndOffsets(ctx, topic)
		if err != nil {
			return false, "end: " + err.Error()
		}
		if err := starts.Error(); err != nil {
			return false, "start: " + err.Error()
		}
		if err := ends.Error(); err != nil {
			return false, "end: " + err.Error()
		}
		var sumStart, sumEnd int64
		starts.Each(func(o kadm.ListedOffset) { sumStart += o.Offset })
		ends.Each(func(o kadm.ListedOffset) { sumEnd += o.Offset })
		n := len(ends[topic])
		return sumEnd == nRecords && sumStart == 0 && n == partitions,
			fmt.Sprintf("partitions=%d sum_start=%d sum_end=%d", n, sumStart, sumEnd)
	})
	step("list_offsets", ok, detail)

	// 8. List groups (no expectation on content, only that the call works).
	if lgs, err := adm.ListGroups(ctx); err != nil {
		step("list_groups", false, err.Error())
	} else {
		step("list_groups", true, fmt.Sprintf("%d groups", len(lgs)))
	}

	// 9. Describe the cluster: brokers as advertised to the client (through
	// a proxy these should be the proxy's addresses), controller, cluster id.
	if md, err := adm.BrokerMetadata(ctx); err != nil {
		step("describe_cluster", false, err.Error())
	} else {
		var bs []string
		for _, b := range md.Brokers {
			bs = append(bs, fmt.Sprintf("%d@%s:%d", b.NodeID, b.Host, b.Port))
		}
		step("describe_cluster", len(md.Brokers) > 0,
			fmt.Sprintf("cluster=%s controller=%d brokers=[%s]", md.Cluster, md.Controller, strings.Join(bs, " ")))
	}

	// 10. Delete the topic and wait for it to disappear from listings.
	if r, err := adm.DeleteTopic(ctx, topic); err != nil {
		step("delete_topic", false, err.Error())
	} else if r.Err != nil {
		step("delete_topic", false, fmt.Sprintf("%v %s", r.Err, r.ErrMessage))
	} else {
		ok, detail = retryUntil(ctx, wait, func(ctx context.Context) (bool, string) {
			tds, err := adm.ListTopics(ctx)
			if err != nil {
				return false, err.Error()
			}
			_, found := tds[topic]
			return !found, fmt.Sprintf("still listed=%v", found)
		})
		step("delete_topic", ok, "deleted and gone from listing: "+detail)
	}

	closeBounded("admin", 10*time.Second, adm.Close)
	res.ElapsedMs = time.Since(start).Milliseconds()
	emit(res)
}
