package receiver

import (
	"encoding/binary"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/collector/confmap"

	"github.com/ebpfotel/ebpfreceiver/internal/sqlsan"
)

// FuzzConfigValidate builds YAML-like documents (the nested maps, lists and
// scalars a YAML decoder yields) from the fuzzer's bytes, unmarshals them
// into the receiver's Config through confmap, as the collector does, and
// validates the result. Nothing may panic, and a configuration that
// Validate accepts must be one the engine can use as it is: Start converts
// it without further checks (ports to uint16, tickers from intervals, the
// ring buffer size handed to the kernel).
func FuzzConfigValidate(f *testing.F) {
	// Seeds: an empty document, every known key once with a plausible
	// value, and documents built around the validation boundaries.
	f.Add([]byte{})
	for i := range fuzzConfigKeys {
		f.Add([]byte{0, 1, byte(i), 2, byte(i * 7)})
		f.Add([]byte{1, 1, byte(i), 8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f})
	}
	f.Add([]byte{0, 4, 0, 3, 9, 1, 4, 4, 2, 5, 5, 10, 3, 6, 2, 11})
	f.Fuzz(func(t *testing.T, in []byte) {
		g := &fuzzDoc{b: in}
		fromDefaults := g.next()&1 == 0
		doc := g.document()

		var cfg *Config
		if fromDefaults {
			cfg = createDefaultConfig().(*Config)
		} else {
			cfg = &Config{}
		}
		// Decoding errors are expected for most documents; a panic is not.
		_ = confmap.NewFromStringMap(doc).Unmarshal(cfg)
		err := cfg.Validate()
		if again := cfg.Validate(); (err == nil) != (again == nil) || err != nil && err.Error() != again.Error() {
			t.Fatalf("Validate is not deterministic: %v / %v", err, again)
		}
		full := confmap.Validate(cfg)
		if err != nil {
			checkErrorsNameFields(t, err)
			if full == nil {
				t.Fatalf("confmap.Validate accepted what Config.Validate refused: %v", err)
			}
			return
		}
		if full != nil {
			// Only the generated metric settings are left to refuse it.
			if !strings.Contains(full.Error(), "metric") && !strings.Contains(full.Error(), "aggregation") {
				t.Fatalf("confmap.Validate refused a valid Config for another reason: %v", full)
			}
		}
		checkUsable(t, cfg)
	})
}

// fuzzConfigKeys are the configuration's leaves (confmap's "::" separates
// levels), plus keys the receiver does not know.
var fuzzConfigKeys = []string{
	"filter::ports", "filter::pids", "filter::cgroups", "filter::executables",
	"postgres::enabled", "postgres::query_text", "postgres::span_kinds",
	"postgres::max_prepared_statements", "postgres::max_pending_requests",
	"grpc::enabled", "grpc::legacy_attributes", "grpc::span_kinds", "grpc::max_open_streams",
	"tls::openssl", "tls::go", "tls::libraries",
	"resource::command_line",
	"map_pressure::enabled", "map_pressure::collection_interval", "map_pressure::warning_threshold",
	"map_pressure::critical_threshold", "map_pressure::userspace_count_max_entries",
	"limits::max_connections", "limits::capture_bytes", "limits::capture_tail_bytes",
	"limits::ring_buffer_bytes", "limits::ring_buffer_wakeup_bytes", "limits::ring_buffer_poll_interval",
	"limits::idle_timeout", "limits::request_idle_timeout",
	"self_metrics_interval", "on_start_failure",
	"metrics::ebpf.capture.drops::enabled", "metrics::ebpf.capture.drops::attributes",
	"metrics::ebpf.capture.drops::aggregation_strategy", "metrics::ebpf.program.run.count::enabled",
	"metrics::ebpf.map.entries::attributes", "metrics::ebpf.protocol.parser.events::aggregation_strategy",
	"filter", "limits", "postgres", "metrics", "metrics::ebpf.capture.bytes",
	"unknown_key", "limits::unknown", "filter::ports::nested",
}

// fuzzStrings are string scalars worth trying: durations, the enumerations'
// values, paths, numbers written as text, and odd spellings.
var fuzzStrings = []string{
	"", "0", "1", "-1", "4096", "0x1000", "1e3", "true", "yes", "null", "~",
	"1ms", "999us", "10s", "-5s", "2m", "1h", "9223372036854775807ns", "1e400s", "NaN", "Inf",
	"obfuscated", "OBFUSCATED", " raw ", "raw", "off", "masked",
	"client", "server", "producer",
	"/sys/fs/cgroup/test", "relative/cgroup", "/", "postgres", "a-very-long-process-name", "\x00", "naïve",
	"sum", "avg", "min", "max", "reason", "ebpf.map.id",
}

// fuzzInts sit on and around the bounds Validate checks.
var fuzzInts = []int64{
	0, 1, -1, 63, 64, 65, 1000, 4095, 4096, 4097, 8192, 65535, 65536, 65537, 1 << 18, 1<<18 + 1,
	1 << 22, 1<<22 + 1, 1 << 30, 1<<30 + 1, 1 << 31, 1 << 32, math.MaxInt32, math.MinInt32,
	math.MaxInt64, math.MinInt64, int64(time.Millisecond), int64(time.Second), int64(100 * time.Millisecond),
}

// fuzzDoc reads a document out of fuzz bytes; it yields zeros once the
// bytes run out, so every input is a document.
type fuzzDoc struct {
	b     []byte
	nodes int
}

func (g *fuzzDoc) next() byte {
	if len(g.b) == 0 {
		return 0
	}
	c := g.b[0]
	g.b = g.b[1:]
	return c
}

func (g *fuzzDoc) document() map[string]any {
	doc := map[string]any{}
	for n := int(g.next() % 16); n > 0 && len(g.b) > 0; n-- {
		var key string
		if k := int(g.next()); k < len(fuzzConfigKeys) {
			key = fuzzConfigKeys[k]
		} else {
			key = fuzzConfigKeys[k%len(fuzzConfigKeys)] + "::" + fuzzStrings[k%len(fuzzStrings)]
		}
		setPath(doc, strings.Split(key, "::"), g.value(0))
	}
	return doc
}

// setPath stores v at path, replacing whatever is in the way.
func setPath(m map[string]any, path []string, v any) {
	for _, k := range path[:len(path)-1] {
		sub, ok := m[k].(map[string]any)
		if !ok {
			sub = map[string]any{}
			m[k] = sub
		}
		m = sub
	}
	m[path[len(path)-1]] = v
}

func (g *fuzzDoc) value(depth int) any {
	g.nodes++
	kind := g.next()
	if depth > 3 || g.nodes > 256 {
		kind %= 7 // scalars only
	}
	switch kind % 11 {
	case 0:
		return nil
	case 1:
		return g.next()&1 == 1
	case 2:
		return fuzzInts[int(g.next())%len(fuzzInts)]
	case 3:
		return int(int8(g.next())) // small, signed
	case 4:
		return fuzzStrings[int(g.next())%len(fuzzStrings)]
	case 5:
		var b [8]byte
		for i := range b {
			b[i] = g.next()
		}
		return math.Float64frombits(binary.LittleEndian.Uint64(b[:]))
	case 6:
		var b [8]byte
		for i := range b {
			b[i] = g.next()
		}
		return int64(binary.LittleEndian.Uint64(b[:])) //nolint:gosec // any bit pattern is wanted
	case 7, 8:
		list := []any{}
		for n := int(g.next() % 20); n > 0; n-- {
			list = append(list, g.value(depth+1))
		}
		if kind%11 == 8 && len(list) < 20 {
			// Long lists cross the entry limits of the filters.
			for n := int(g.next()) * 5; n > 0; n-- {
				list = append(list, n)
			}
		}
		return list
	case 9:
		m := map[string]any{}
		for n := int(g.next() % 6); n > 0; n-- {
			m[fuzzStrings[int(g.next())%len(fuzzStrings)]] = g.value(depth + 1)
		}
		return m
	default:
		// A string made of the input itself.
		n := int(g.next() % 40)
		n = min(n, len(g.b))
		s := string(g.b[:n])
		g.b = g.b[n:]
		return s
	}
}

// validateFields are the field names Config.Validate's errors start with.
var validateFields = []string{
	"filter.ports: ", "filter.pids: ", "filter.cgroups: ", "filter.executables: ",
	"limits.max_connections: ", "limits.capture_bytes: ", "limits.capture_tail_bytes: ",
	"limits.ring_buffer_bytes: ", "limits.ring_buffer_wakeup_bytes: ", "limits.ring_buffer_poll_interval: ",
	"limits.idle_timeout: ", "limits.request_idle_timeout: ",
	"postgres.query_text: ", "postgres.span_kinds: ", "grpc.span_kinds: ",
	"postgres.max_prepared_statements: ", "postgres.max_pending_requests: ", "grpc.max_open_streams: ",
	"map_pressure.collection_interval: ", "map_pressure.warning_threshold: ",
	"map_pressure.critical_threshold: ", "map_pressure.userspace_count_max_entries: ",
	"self_metrics_interval: ", "on_start_failure: ",
}

// checkErrorsNameFields: every error line starts with the field it is about.
func checkErrorsNameFields(t *testing.T, err error) {
	t.Helper()
	for _, line := range strings.Split(err.Error(), "\n") {
		named := false
		for _, f := range validateFields {
			if strings.HasPrefix(line, f) {
				named = true
				break
			}
		}
		if !named {
			t.Fatalf("error line names no field: %q", line)
		}
	}
}

// checkUsable asserts what Start relies on without checking again.
func checkUsable(t *testing.T, cfg *Config) {
	t.Helper()
	for _, p := range cfg.Filter.Ports {
		if p < 1 || p > math.MaxUint16 {
			t.Fatalf("port %d accepted", p)
		}
	}
	for _, p := range cfg.Filter.PIDs {
		if p < 1 || p > math.MaxInt32 {
			t.Fatalf("pid %d accepted", p)
		}
	}
	if len(cfg.Filter.Cgroups) > maxCgroups || len(cfg.Filter.PIDs) > maxFilterEntries || len(cfg.Filter.Ports) > maxFilterEntries ||
		len(cfg.Filter.Executables) > maxExecutables {
		t.Fatalf("filter lists over the kernel maps' sizes accepted: %+v", cfg.Filter)
	}
	for _, e := range cfg.Filter.Executables {
		if e == "" || len(e) > maxCommLen {
			t.Fatalf("executable %q accepted", e)
		}
	}
	l := cfg.Limits
	page := os.Getpagesize()
	if l.RingBufferBytes < page || l.RingBufferBytes%page != 0 || l.RingBufferBytes&(l.RingBufferBytes-1) != 0 || l.RingBufferBytes > math.MaxUint32 {
		t.Fatalf("ring buffer size %d accepted (page %d)", l.RingBufferBytes, page)
	}
	if l.RingBufferWakeupBytes < 0 || l.RingBufferWakeupBytes > l.RingBufferBytes {
		t.Fatalf("wakeup %d accepted", l.RingBufferWakeupBytes)
	}
	if l.CaptureBytes < 1 || l.CaptureBytes > maxCaptureBytes || l.CaptureTailBytes < 0 || l.CaptureTailBytes >= l.CaptureBytes {
		t.Fatalf("capture %d/%d accepted", l.CaptureBytes, l.CaptureTailBytes)
	}
	if l.MaxConnections < 1 || l.MaxConnections > math.MaxUint32 {
		t.Fatalf("max_connections %d accepted", l.MaxConnections)
	}
	// Tickers and deadlines built from these panic or spin when not positive.
	for name, d := range map[string]time.Duration{
		"poll": l.RingBufferPollInterval, "idle": l.IdleTimeout, "request idle": l.RequestIdleTimeout,
		"self metrics": cfg.SelfMetricsInterval,
	} {
		if d <= 0 {
			t.Fatalf("%s interval %s accepted", name, d)
		}
	}
	if l.RingBufferPollInterval < time.Millisecond {
		t.Fatalf("poll interval %s accepted: cilium/ebpf would busy-spin", l.RingBufferPollInterval)
	}
	if cfg.MapPressure.Enabled && cfg.MapPressure.CollectionInterval <= 0 {
		t.Fatalf("map pressure interval %s accepted", cfg.MapPressure.CollectionInterval)
	}
	if _, err := sqlsan.ParseMode(cfg.Postgres.QueryText); err != nil {
		t.Fatalf("query_text %q accepted but the tracer cannot use it: %v", cfg.Postgres.QueryText, err)
	}
	if cfg.Postgres.Enabled && len(kindsOfAny(cfg.Postgres.SpanKinds)) == 0 || cfg.GRPC.Enabled && len(kindsOfAny(cfg.GRPC.SpanKinds)) == 0 {
		t.Fatalf("an enabled protocol with no span kind accepted: %v / %v", cfg.Postgres.SpanKinds, cfg.GRPC.SpanKinds)
	}
}

// kindsOfAny returns the known span kinds in kinds.
func kindsOfAny(kinds []string) []string {
	var out []string
	for _, k := range kinds {
		if k == "client" || k == "server" {
			out = append(out, k)
		}
	}
	return out
}
