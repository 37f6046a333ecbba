package deploy_test

// Helpers shared by the Kubernetes, Helm, systemd and documentation tests:
// strict decoding of Kubernetes manifests, running `otelcol-ebpf validate`,
// and structural checks of collector configs.

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	k8syaml "sigs.k8s.io/yaml"
)

const (
	kubernetesDir = "kubernetes"
	deploymentDoc = "../docs/deployment.md"
	// podIP stands in for the downward-API MY_POD_IP when a config is
	// validated outside a pod.
	podIP = "10.1.2.3"
)

// manifestKinds maps "apiVersion kind" to the API type a document of that
// kind decodes into. A kind missing here fails the test: add its type
// rather than decode it loosely.
var manifestKinds = map[string]func() any{
	"v1 Namespace":       func() any { return &corev1.Namespace{} },
	"v1 ServiceAccount":  func() any { return &corev1.ServiceAccount{} },
	"v1 ConfigMap":       func() any { return &corev1.ConfigMap{} },
	"v1 Service":         func() any { return &corev1.Service{} },
	"apps/v1 DaemonSet":  func() any { return &appsv1.DaemonSet{} },
	"apps/v1 Deployment": func() any { return &appsv1.Deployment{} },
	"rbac.authorization.k8s.io/v1 ClusterRole":        func() any { return &rbacv1.ClusterRole{} },
	"rbac.authorization.k8s.io/v1 ClusterRoleBinding": func() any { return &rbacv1.ClusterRoleBinding{} },
}

// manifest is one file of Kubernetes documents, decoded.
type manifest struct {
	path    string
	objects []any
}

var docSeparator = regexp.MustCompile(`(?m)^---[ \t]*$`)

// decodeStrict decodes one YAML document into the API type named by its
// apiVersion and kind. Unknown fields and duplicate keys are errors
// (sigs.k8s.io/yaml's strict mode: YAML to JSON, then DisallowUnknownFields).
func decodeStrict(doc []byte) (any, error) {
	var tm metav1.TypeMeta
	if err := k8syaml.Unmarshal(doc, &tm); err != nil {
		return nil, fmt.Errorf("read apiVersion and kind: %w", err)
	}
	newObj, ok := manifestKinds[tm.APIVersion+" "+tm.Kind]
	if !ok {
		return nil, fmt.Errorf("apiVersion %q kind %q: no API type registered for it in manifestKinds", tm.APIVersion, tm.Kind)
	}
	obj := newObj()
	if err := unmarshalStrict(doc, obj); err != nil {
		return nil, fmt.Errorf("%s %s: %w", tm.APIVersion, tm.Kind, err)
	}
	return obj, nil
}

// unmarshalStrict decodes YAML into obj the way the API server would accept
// it, and no more loosely:
//   - sigs.k8s.io/yaml's UnmarshalStrict rejects duplicate keys and unknown
//     fields, but it decodes with encoding/json, which matches field names
//     case-insensitively (hostPid would pass for hostPID);
//   - so the same JSON is decoded again with sigs.k8s.io/json, the API
//     machinery's case-sensitive decoder, with unknown and duplicate fields
//     as errors.
func unmarshalStrict(doc []byte, obj any) error {
	if err := k8syaml.UnmarshalStrict(doc, obj); err != nil {
		return err
	}
	j, err := k8syaml.YAMLToJSONStrict(doc)
	if err != nil {
		return err
	}
	fresh := reflect.New(reflect.TypeOf(obj).Elem()).Interface()
	strictErrs, err := kjson.UnmarshalStrict(j, fresh)
	if err != nil {
		return err
	}
	return errors.Join(strictErrs...)
}

// loadManifest reads every document of a file strictly. Empty documents
// (comments only) are skipped.
func loadManifest(t *testing.T, name string) manifest {
	t.Helper()
	path := filepath.Join(kubernetesDir, name)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	m := manifest{path: path}
	for i, doc := range docSeparator.Split(string(b), -1) {
		var probe any
		require.NoError(t, yaml.Unmarshal([]byte(doc), &probe), "%s document %d is not YAML", path, i)
		if probe == nil {
			continue
		}
		obj, err := decodeStrict([]byte(doc))
		require.NoError(t, err, "%s document %d", path, i)
		m.objects = append(m.objects, obj)
	}
	require.NotEmpty(t, m.objects, "%s holds no document", path)
	return m
}

// only returns the single object of type T named name (any name when empty).
func only[T any](t *testing.T, m manifest, name string) *T {
	t.Helper()
	var found []*T
	for _, o := range m.objects {
		if v, ok := o.(*T); ok {
			if name == "" || objectName(v) == name {
				found = append(found, v)
			}
		}
	}
	require.Len(t, found, 1, "%s: want exactly one %T named %q", m.path, *new(T), name)
	return found[0]
}

func objectName(o any) string {
	if a, ok := o.(metav1.Object); ok {
		return a.GetName()
	}
	return ""
}

// builtCollector is bin/otelcol-ebpf, built by `make otelcol` (which
// `make test` runs first).
func builtCollector(t *testing.T) string {
	t.Helper()
	bin, err := filepath.Abs(filepath.Join("..", "bin", "otelcol-ebpf"))
	require.NoError(t, err)
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("%s is missing: build it with `make otelcol` (`make test` does it first); the deployment configs are validated with it", bin)
	}
	return bin
}

// validateWithCollector runs `otelcol-ebpf validate` on a collector config:
// it resolves the config, unmarshals every component's settings and runs
// their Validate, the same checks the collector makes before it starts.
func validateWithCollector(t *testing.T, label, config string) {
	t.Helper()
	bin := builtCollector(t)
	path := filepath.Join(t.TempDir(), "config.yaml")
	require.NoError(t, os.WriteFile(path, []byte(config), 0o600))
	cmd := exec.Command(bin, "validate", "--config", path)
	cmd.Env = append(os.Environ(), "MY_POD_IP="+podIP)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "otelcol-ebpf validate rejected %s:\n%s\n--- config ---\n%s", label, out, config)
}

// parseConfig unmarshals a collector config into plain maps.
func parseConfig(t *testing.T, label, config string) map[string]any {
	t.Helper()
	var cfg map[string]any
	require.NoError(t, yaml.Unmarshal([]byte(config), &cfg), "%s is not YAML", label)
	require.NotEmpty(t, cfg, "%s is empty", label)
	return cfg
}

// componentID matches a collector component id: type[/name].
var componentID = regexp.MustCompile(`^[a-zA-Z][0-9a-zA-Z_]{0,62}(/[^/\s]+)?$`)

// checkConfigStructure checks what can be checked without the components'
// code: every id is well formed, every pipeline has receivers and exporters,
// and every receiver, processor, exporter and extension a pipeline or the
// service names is defined in its section. It returns the pipelines by id.
func checkConfigStructure(t *testing.T, label string, cfg map[string]any) map[string]map[string][]string {
	t.Helper()
	defined := map[string]map[string]any{}
	for _, section := range []string{"receivers", "processors", "exporters", "extensions", "connectors"} {
		m, _ := cfg[section].(map[string]any)
		if cfg[section] != nil {
			require.NotNil(t, m, "%s: %s must be a mapping", label, section)
		}
		for id := range m {
			require.Regexp(t, componentID, id, "%s: %s id", label, section)
		}
		defined[section] = m
	}
	service, ok := cfg["service"].(map[string]any)
	require.True(t, ok, "%s: no service section", label)
	for _, ext := range stringList(t, label+": service.extensions", service["extensions"]) {
		require.Contains(t, defined["extensions"], ext, "%s: service.extensions names %q, which extensions does not define", label, ext)
	}
	rawPipelines, ok := service["pipelines"].(map[string]any)
	require.True(t, ok && len(rawPipelines) > 0, "%s: no service.pipelines", label)
	pipelines := map[string]map[string][]string{}
	for pid, raw := range rawPipelines {
		signal, _, _ := strings.Cut(pid, "/")
		require.Contains(t, []string{"traces", "metrics", "logs", "profiles"}, signal, "%s: pipeline %q", label, pid)
		p, ok := raw.(map[string]any)
		require.True(t, ok, "%s: pipeline %q must be a mapping", label, pid)
		pipelines[pid] = map[string][]string{}
		for _, role := range []string{"receivers", "processors", "exporters"} {
			ids := stringList(t, fmt.Sprintf("%s: pipeline %s %s", label, pid, role), p[role])
			for _, id := range ids {
				_, isConnector := defined["connectors"][id]
				_, isDefined := defined[role][id]
				require.True(t, isDefined || (isConnector && role != "processors"),
					"%s: pipeline %s lists %s %q, which is not defined under %s", label, pid, role, id, role)
			}
			pipelines[pid][role] = ids
		}
		require.NotEmpty(t, pipelines[pid]["receivers"], "%s: pipeline %s has no receivers", label, pid)
		require.NotEmpty(t, pipelines[pid]["exporters"], "%s: pipeline %s has no exporters", label, pid)
	}
	return pipelines
}

func stringList(t *testing.T, label string, v any) []string {
	t.Helper()
	if v == nil {
		return nil
	}
	raw, ok := v.([]any)
	require.True(t, ok, "%s must be a list", label)
	out := make([]string, 0, len(raw))
	for _, e := range raw {
		s, ok := e.(string)
		require.True(t, ok, "%s: %v is not a string", label, e)
		out = append(out, s)
	}
	return out
}

// lookup walks a parsed config by keys.
func lookup(t *testing.T, label string, v any, keys ...string) any {
	t.Helper()
	for i, k := range keys {
		m, ok := v.(map[string]any)
		require.True(t, ok, "%s: %s is not a mapping", label, strings.Join(keys[:i], "."))
		v, ok = m[k]
		require.True(t, ok, "%s: %s is missing", label, strings.Join(keys[:i+1], "."))
	}
	return v
}

var envRef = regexp.MustCompile(`\$\{[^}]*\}`)

// endpointPort returns the port of a host:port string; the host may be an
// ${env:...} reference.
func endpointPort(t *testing.T, label, endpoint string) int {
	t.Helper()
	_, port, err := net.SplitHostPort(envRef.ReplaceAllString(endpoint, "host"))
	require.NoError(t, err, "%s: %q is not host:port", label, endpoint)
	n, err := strconv.Atoi(port)
	require.NoError(t, err, "%s: port of %q", label, endpoint)
	return n
}

// fencedBlocks returns the contents of the ```lang blocks of a markdown
// file.
func fencedBlocks(t *testing.T, path, lang string) []string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	var blocks []string
	var cur *bytes.Buffer
	for _, line := range strings.SplitAfter(string(b), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case cur == nil && trimmed == "```"+lang:
			cur = &bytes.Buffer{}
		case cur != nil && trimmed == "```":
			blocks = append(blocks, cur.String())
			cur = nil
		case cur != nil:
			cur.WriteString(line)
		}
	}
	require.Nil(t, cur, "%s: unterminated ``` block", path)
	return blocks
}

// sortedCopy returns s sorted, for order-insensitive comparisons.
func sortedCopy[S ~[]E, E ~string](s S) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[i] = string(v)
	}
	slices.Sort(out)
	return out
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}
