package receiver

import (
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
)

const configDoc = "../docs/configuration.md"

// configLeaf is one setting of Config: its YAML key path and where it sits
// in the struct.
type configLeaf struct {
	path  string
	typ   reflect.Type
	index []int
}

var durationType = reflect.TypeFor[time.Duration]()

// configLeaves walks Config's mapstructure tags: structs are sections,
// everything else is a setting. The squashed mdatagen MetricsBuilderConfig
// (the `metrics:` switches) is left to receiver/documentation.md.
func configLeaves(t *testing.T, typ reflect.Type, prefix string, index []int) []configLeaf {
	t.Helper()
	var out []configLeaf
	for i := range typ.NumField() {
		f := typ.Field(i)
		if !f.IsExported() {
			continue
		}
		tag, ok := f.Tag.Lookup("mapstructure")
		require.True(t, ok, "%s.%s has no mapstructure tag", typ.Name(), f.Name)
		name, opts, _ := strings.Cut(tag, ",")
		if slices.Contains(strings.Split(opts, ","), "squash") {
			require.Equal(t, "MetricsBuilderConfig", f.Name, "only the mdatagen config is squashed into Config")
			continue
		}
		require.NotEmpty(t, name, "%s.%s has an empty mapstructure name", typ.Name(), f.Name)
		path := prefix + name
		idx := append(slices.Clone(index), i)
		if f.Type.Kind() == reflect.Struct && f.Type != durationType {
			out = append(out, configLeaves(t, f.Type, path+".", idx)...)
			continue
		}
		out = append(out, configLeaf{path: path, typ: f.Type, index: idx})
	}
	return out
}

// docType is how configuration.md names a Go type.
func docType(t *testing.T, typ reflect.Type) string {
	t.Helper()
	switch {
	case typ == durationType:
		return "duration"
	case typ.Kind() == reflect.Bool:
		return "bool"
	case typ.Kind() == reflect.Int:
		return "int"
	case typ.Kind() == reflect.Float64:
		return "float"
	case typ.Kind() == reflect.String:
		return "string"
	case typ.Kind() == reflect.Slice:
		return "[]" + docType(t, typ.Elem())
	}
	t.Fatalf("no documentation type for %s: extend docType", typ)
	return ""
}

// docRow is one row of a `| key | type | default | description |` table.
type docRow struct {
	line                  int
	typ, def, description string
}

// docTable parses every settings table of configuration.md, keyed by the
// key column (backticks removed).
func docTable(t *testing.T) map[string]docRow {
	t.Helper()
	b, err := os.ReadFile(configDoc)
	require.NoError(t, err)
	rows := map[string]docRow{}
	inTable := false
	for n, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "|") {
			inTable = false
			continue
		}
		cells := strings.Split(strings.Trim(line, "|"), "|")
		for i := range cells {
			cells[i] = strings.TrimSpace(cells[i])
		}
		if len(cells) >= 4 && cells[0] == "key" && cells[1] == "type" && cells[2] == "default" && cells[3] == "description" {
			inTable = true
			continue
		}
		if !inTable || strings.HasPrefix(cells[0], "---") {
			continue
		}
		require.Len(t, cells, 4, "%s:%d: a settings row has 4 cells", configDoc, n+1)
		key := strings.Trim(cells[0], "`")
		_, dup := rows[key]
		require.False(t, dup, "%s:%d: %s is documented twice", configDoc, n+1, key)
		rows[key] = docRow{line: n + 1, typ: cells[1], def: cells[2], description: cells[3]}
	}
	require.NotEmpty(t, rows, "%s has no `| key | type | default | description |` table", configDoc)
	return rows
}

func TestConfigDocumentsEveryField(t *testing.T) {
	leaves := configLeaves(t, reflect.TypeFor[Config](), "", nil)
	rows := docTable(t)
	def := reflect.ValueOf(createDefaultConfig().(*Config)).Elem()

	documented := map[string]bool{}
	for _, leaf := range leaves {
		row, ok := rows[leaf.path]
		if !ok {
			t.Errorf("%s: no row for %s (add `| %s | %s | default | description |` to its section)", configDoc, leaf.path, leaf.path, docType(t, leaf.typ))
			continue
		}
		documented[leaf.path] = true
		require.Equal(t, docType(t, leaf.typ), row.typ, "%s:%d: type of %s", configDoc, row.line, leaf.path)
		require.NotEmpty(t, row.description, "%s:%d: %s has no description", configDoc, row.line, leaf.path)

		// The default column holds one YAML value in backticks; decoded
		// into the field's type it must equal createDefaultConfig's.
		require.True(t, len(row.def) >= 2 && row.def[0] == '`' && row.def[len(row.def)-1] == '`' && strings.Count(row.def, "`") == 2,
			"%s:%d: the default of %s must be one value in backticks, got %q", configDoc, row.line, leaf.path, row.def)
		docValue := reflect.New(leaf.typ)
		require.NoError(t, yaml.Unmarshal([]byte(strings.Trim(row.def, "`")), docValue.Interface()),
			"%s:%d: default of %s is not a %s", configDoc, row.line, leaf.path, row.typ)
		got, want := docValue.Elem().Interface(), def.FieldByIndex(leaf.index).Interface()
		if leaf.typ.Kind() == reflect.Slice && docValue.Elem().Len() == 0 && def.FieldByIndex(leaf.index).Len() == 0 {
			continue // [] documents a nil list
		}
		require.Equal(t, want, got, "%s:%d: documented default of %s differs from createDefaultConfig", configDoc, row.line, leaf.path)
	}
	for key, row := range rows {
		require.True(t, documented[key], "%s:%d: %s is documented but Config has no such field", configDoc, row.line, key)
	}

	// The squashed metrics switches are pointed to, not repeated.
	b, err := os.ReadFile(configDoc)
	require.NoError(t, err)
	require.Contains(t, string(b), "receiver/documentation.md", "configuration.md must point to the generated metrics list")
	require.Contains(t, string(b), "`metrics:`")
}

func TestConfigDocTableParsing(t *testing.T) {
	// The walk above is only as good as its view of Config: check it on the
	// parts whose shape is known.
	leaves := configLeaves(t, reflect.TypeFor[Config](), "", nil)
	paths := make([]string, 0, len(leaves))
	for _, l := range leaves {
		paths = append(paths, l.path)
	}
	for _, want := range []string{"filter.ports", "postgres.query_text", "map_pressure.userspace_count_max_entries", "limits.ring_buffer_poll_interval", "self_metrics_interval"} {
		require.Contains(t, paths, want)
	}
	require.NotContains(t, paths, "metrics", "the squashed mdatagen config is not walked")
	for _, p := range paths {
		require.NotContains(t, p, "..", "empty path element in %s", p)
	}
	require.Equal(t, "duration", docType(t, durationType))
	require.Equal(t, "[]string", docType(t, reflect.TypeFor[[]string]()))
}
