package deploy_test

import (
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
)

// The capabilities the agent gets, and nothing else: the manifests, the Helm
// values and the systemd unit must agree on them (the reasons are in
// daemonset.yaml and deploy/systemd/otelcol-ebpf.service).
var agentCapabilities = []string{"BPF", "DAC_READ_SEARCH", "PERFMON", "SYS_PTRACE"}

// The host directories the agent mounts, read-only, at the same path.
var agentHostPaths = []string{"/sys/fs/cgroup", "/sys/kernel/btf", "/sys/kernel/tracing"}

const (
	agentNamespace = "observability"
	agentName      = "otelcol-ebpf"
	gatewayName    = "otelcol-gateway"
	otlpGRPCPort   = 4317
)

func TestKubernetesStrictDecodeRejectsUnknownFields(t *testing.T) {
	// The strictness every manifest test relies on: a misspelt field, or one
	// at the wrong level, must not be dropped silently.
	for name, doc := range map[string]string{
		"misspelt field": "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: x}\nspec:\n  template:\n    spec:\n      hostPid: true\n      containers: []\n",
		"wrong level":    "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\nconfig.yaml: a\n",
		"duplicate key":  "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\ndata: {c: d}\n",
		"unknown kind":   "apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n",
	} {
		_, err := decodeStrict([]byte(doc))
		require.Error(t, err, name)
	}
	obj, err := decodeStrict([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n"))
	require.NoError(t, err)
	require.Equal(t, "b", obj.(*corev1.ConfigMap).Data["a"])
}

func TestKubernetesManifestsDecodeStrictly(t *testing.T) {
	clusterScoped := map[string]bool{"Namespace": true, "ClusterRole": true, "ClusterRoleBinding": true}
	for _, file := range []string{"daemonset.yaml", "gateway.yaml"} {
		m := loadManifest(t, file)
		for _, o := range m.objects {
			kind := strings.TrimPrefix(fmt.Sprintf("%T", o), "*")
			kind = kind[strings.LastIndex(kind, ".")+1:]
			meta := objectMeta(o)
			require.NotEmpty(t, meta.Name, "%s: a %s without a name", file, kind)
			if clusterScoped[kind] {
				require.Empty(t, meta.Namespace, "%s: %s %s is cluster-scoped", file, kind, meta.Name)
			} else {
				require.Equal(t, agentNamespace, meta.Namespace, "%s: %s %s", file, kind, meta.Name)
			}
		}
	}
}

func TestKubernetesAgentDaemonSet(t *testing.T) {
	m := loadManifest(t, "daemonset.yaml")
	only[corev1.Namespace](t, m, agentNamespace)
	ds := only[appsv1.DaemonSet](t, m, agentName)
	pod := ds.Spec.Template.Spec

	require.Equal(t, ds.Spec.Selector.MatchLabels, subset(ds.Spec.Template.Labels, ds.Spec.Selector.MatchLabels),
		"the selector must match the pod template's labels")
	sa := only[corev1.ServiceAccount](t, m, pod.ServiceAccountName)
	require.NotNil(t, sa.AutomountServiceAccountToken)
	require.False(t, *sa.AutomountServiceAccountToken, "the agent reads no Kubernetes API: no token")

	// Host pid namespace, the pod's own network.
	require.True(t, pod.HostPID, "hostPID: host pids are what the kernel reports")
	require.False(t, pod.HostNetwork)
	require.NotNil(t, pod.SecurityContext)
	require.NotNil(t, pod.SecurityContext.RunAsUser)
	require.Zero(t, *pod.SecurityContext.RunAsUser, "added capabilities reach only uid 0 in Kubernetes")

	require.Len(t, pod.Containers, 1)
	c := pod.Containers[0]
	checkAgentSecurityContext(t, c.SecurityContext)

	// Resources: requests and limits for cpu and memory, limits above requests.
	for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
		req, okReq := c.Resources.Requests[r]
		lim, okLim := c.Resources.Limits[r]
		require.True(t, okReq && okLim, "resources: %s needs a request and a limit", r)
		require.GreaterOrEqual(t, lim.Cmp(req), 0, "resources: %s limit below its request", r)
	}

	// Mounts: each names a volume; the host directories are mounted
	// read-only at their own path; /proc and /sys/fs/bpf are not mounted.
	volumes := map[string]corev1.Volume{}
	for _, v := range pod.Volumes {
		volumes[v.Name] = v
	}
	var hostPaths []string
	for _, vm := range c.VolumeMounts {
		v, ok := volumes[vm.Name]
		require.True(t, ok, "volumeMount %q names no volume", vm.Name)
		if v.HostPath != nil {
			require.Equal(t, v.HostPath.Path, vm.MountPath, "host directory %s must be mounted at the same path", v.HostPath.Path)
			require.True(t, vm.ReadOnly, "host directory %s must be mounted read-only", vm.MountPath)
			require.NotNil(t, v.HostPath.Type)
			require.Equal(t, corev1.HostPathDirectory, *v.HostPath.Type, "%s must exist on the node", v.HostPath.Path)
			hostPaths = append(hostPaths, v.HostPath.Path)
		}
	}
	require.Equal(t, agentHostPaths, sortedCopy(hostPaths))

	// The config: --config names a file of a ConfigMap mounted in the pod.
	configPath := flagValue(t, c.Command, "--config")
	require.Equal(t, "/otelcol-ebpf", c.Command[0], "the image has the binary at /otelcol-ebpf")
	mount := mountOf(t, c.VolumeMounts, path.Dir(configPath))
	vol := volumes[mount.Name]
	require.NotNil(t, vol.ConfigMap, "%s is not a ConfigMap volume", mount.MountPath)
	cm := only[corev1.ConfigMap](t, m, vol.ConfigMap.Name)
	config, ok := cm.Data[path.Base(configPath)]
	require.True(t, ok, "ConfigMap %s has no key %s", cm.Name, path.Base(configPath))
	validateWithCollector(t, "the agent config in daemonset.yaml", config)

	cfg := parseConfig(t, "agent config", config)
	pipelines := checkConfigStructure(t, "agent config", cfg)
	checkAgentPipelines(t, pipelines)

	// The metrics Prometheus scrapes: annotation, container port and the
	// prometheus exporter's endpoint agree.
	ann := ds.Spec.Template.Annotations
	require.Equal(t, "true", ann["prometheus.io/scrape"])
	promPort, err := strconv.Atoi(ann["prometheus.io/port"])
	require.NoError(t, err, "prometheus.io/port")
	require.Equal(t, promPort, endpointPort(t, "prometheus exporter", lookup(t, "agent config", cfg, "exporters", "prometheus", "endpoint").(string)))
	require.True(t, slices.ContainsFunc(c.Ports, func(p corev1.ContainerPort) bool { return int(p.ContainerPort) == promPort }),
		"container port %d (prometheus.io/port) is not declared", promPort)

	// Probes point at a declared port.
	for name, p := range map[string]*corev1.Probe{"liveness": c.LivenessProbe, "readiness": c.ReadinessProbe} {
		require.NotNil(t, p, "%s probe", name)
		require.NotNil(t, p.HTTPGet, "%s probe", name)
		require.True(t, slices.ContainsFunc(c.Ports, func(cp corev1.ContainerPort) bool {
			return cp.Name == p.HTTPGet.Port.String() || strconv.Itoa(int(cp.ContainerPort)) == p.HTTPGet.Port.String()
		}), "%s probe port %s is not a container port", name, p.HTTPGet.Port.String())
	}

	// The spans go to the gateway's Service.
	gw := loadManifest(t, "gateway.yaml")
	svc := only[corev1.Service](t, gw, gatewayName)
	endpoint := lookup(t, "agent config", cfg, "exporters", "otlp_grpc", "endpoint").(string)
	require.Equal(t, fmt.Sprintf("%s.%s.svc.cluster.local:%d", svc.Name, svc.Namespace, otlpGRPCPort), endpoint,
		"the agent must export to the gateway Service in gateway.yaml")
}

// checkAgentSecurityContext: least privilege, the four capabilities only.
func checkAgentSecurityContext(t *testing.T, sc *corev1.SecurityContext) {
	t.Helper()
	require.NotNil(t, sc, "container securityContext")
	require.NotNil(t, sc.Privileged)
	require.False(t, *sc.Privileged, "privileged is the documented fallback, not the default")
	require.NotNil(t, sc.AllowPrivilegeEscalation)
	require.False(t, *sc.AllowPrivilegeEscalation)
	require.NotNil(t, sc.ReadOnlyRootFilesystem)
	require.True(t, *sc.ReadOnlyRootFilesystem)
	require.NotNil(t, sc.Capabilities)
	require.Equal(t, []string{"ALL"}, sortedCopy(sc.Capabilities.Drop))
	require.Equal(t, agentCapabilities, sortedCopy(sc.Capabilities.Add))
}

// checkAgentPipelines: ebpf feeds both signals, memory_limiter comes first.
func checkAgentPipelines(t *testing.T, pipelines map[string]map[string][]string) {
	t.Helper()
	for _, signal := range []string{"traces", "metrics"} {
		p, ok := pipelines[signal]
		require.True(t, ok, "agent config: no %s pipeline", signal)
		require.Equal(t, []string{"ebpf"}, p["receivers"], "agent %s pipeline", signal)
		require.Equal(t, []string{"memory_limiter", "batch"}, p["processors"], "agent %s pipeline: memory_limiter first", signal)
	}
	require.Equal(t, []string{"otlp_grpc"}, pipelines["traces"]["exporters"])
	require.Equal(t, []string{"prometheus"}, pipelines["metrics"]["exporters"])
}

func TestKubernetesGateway(t *testing.T) {
	m := loadManifest(t, "gateway.yaml")
	dep := only[appsv1.Deployment](t, m, gatewayName)
	pod := dep.Spec.Template.Spec
	require.Len(t, pod.Containers, 1)
	c := pod.Containers[0]
	require.True(t, strings.HasPrefix(c.Image, "otel/opentelemetry-collector-contrib:"), "the gateway runs the upstream contrib image")
	require.NotContains(t, c.Image, ":latest", "pin the contrib image")

	// RBAC for k8s_attributes: binding -> role and service account of the pod.
	sa := only[corev1.ServiceAccount](t, m, pod.ServiceAccountName)
	crb := only[rbacv1.ClusterRoleBinding](t, m, "")
	require.Equal(t, "ClusterRole", crb.RoleRef.Kind)
	role := only[rbacv1.ClusterRole](t, m, crb.RoleRef.Name)
	require.Contains(t, crb.Subjects, rbacv1.Subject{Kind: "ServiceAccount", Name: sa.Name, Namespace: sa.Namespace})
	for _, need := range []struct{ group, resource string }{{"", "pods"}, {"", "namespaces"}, {"apps", "replicasets"}} {
		for _, verb := range []string{"get", "list", "watch"} {
			require.True(t, allows(role.Rules, need.group, need.resource, verb),
				"ClusterRole %s must allow %s on %s (group %q) for k8s_attributes", role.Name, verb, need.resource, need.group)
		}
	}

	// The Service the agents send to selects the gateway pods and reaches a
	// declared port, the OTLP receiver's.
	svc := only[corev1.Service](t, m, gatewayName)
	require.Equal(t, svc.Spec.Selector, subset(dep.Spec.Template.Labels, svc.Spec.Selector))
	require.Len(t, svc.Spec.Ports, 1)
	require.EqualValues(t, otlpGRPCPort, svc.Spec.Ports[0].Port)
	target := containerPort(t, c, svc.Spec.Ports[0].TargetPort.String())

	// The config: structure only (its components are contrib's, not in our
	// distribution, so `otelcol-ebpf validate` cannot load them).
	configPath := flagValue(t, c.Args, "--config")
	mount := mountOf(t, c.VolumeMounts, path.Dir(configPath))
	var cmName string
	for _, v := range pod.Volumes {
		if v.Name == mount.Name && v.ConfigMap != nil {
			cmName = v.ConfigMap.Name
		}
	}
	require.NotEmpty(t, cmName, "%s is not a ConfigMap volume", mount.MountPath)
	cm := only[corev1.ConfigMap](t, m, cmName)
	config, ok := cm.Data[path.Base(configPath)]
	require.True(t, ok, "ConfigMap %s has no key %s", cm.Name, path.Base(configPath))
	cfg := parseConfig(t, "gateway config", config)
	pipelines := checkConfigStructure(t, "gateway config", cfg)
	traces := pipelines["traces"]
	require.Equal(t, []string{"otlp"}, traces["receivers"])
	require.Equal(t, "memory_limiter", traces["processors"][0], "memory_limiter comes first")
	require.Contains(t, traces["processors"], "k8s_attributes")
	require.Equal(t, []string{"load_balancing"}, traces["exporters"])
	require.EqualValues(t, target, endpointPort(t, "otlp receiver", lookup(t, "gateway config", cfg, "receivers", "otlp", "protocols", "grpc", "endpoint").(string)))

	// k8s_attributes matches on container.id, which the receiver sets, and
	// extracts a container attribute (needed for container.id association).
	assoc := lookup(t, "gateway config", cfg, "processors", "k8s_attributes", "pod_association").([]any)
	require.Contains(t, fmt.Sprint(assoc), "name:container.id")
	meta := stringList(t, "k8s_attributes metadata", lookup(t, "gateway config", cfg, "processors", "k8s_attributes", "extract", "metadata"))
	require.True(t, slices.ContainsFunc(meta, func(s string) bool {
		return strings.HasPrefix(s, "container.") || s == "k8s.container.name"
	}), "container.id association needs a container attribute in extract.metadata")

	// load_balancing routes by trace id to the headless Service in this file.
	lb := lookup(t, "gateway config", cfg, "exporters", "load_balancing")
	require.Equal(t, "traceID", lookup(t, "load_balancing", lb, "routing_key"))
	host := lookup(t, "load_balancing", lb, "resolver", "dns", "hostname").(string)
	port := lookup(t, "load_balancing", lb, "resolver", "dns", "port").(string)
	name, rest, _ := strings.Cut(host, ".")
	headless := only[corev1.Service](t, m, name)
	require.Equal(t, headless.Namespace+".svc.cluster.local", rest, "resolver hostname must be the headless Service's cluster DNS name")
	require.Equal(t, corev1.ClusterIPNone, headless.Spec.ClusterIP, "the dns resolver needs a headless Service")
	require.NotEmpty(t, headless.Spec.Selector)
	require.Equal(t, port, strconv.Itoa(int(headless.Spec.Ports[0].Port)))

	// The health_check extension backs the probes.
	hc := endpointPort(t, "health_check", lookup(t, "gateway config", cfg, "extensions", "health_check", "endpoint").(string))
	require.EqualValues(t, hc, containerPort(t, c, c.LivenessProbe.HTTPGet.Port.String()))
	require.EqualValues(t, hc, containerPort(t, c, c.ReadinessProbe.HTTPGet.Port.String()))
}

// helmValues is the part of the opentelemetry-collector chart's values that
// this file sets and the test reads; the Kubernetes pieces are decoded
// strictly into the API types below.
type helmValues struct {
	Mode  string `json:"mode"`
	Image struct {
		Repository string `json:"repository"`
		Tag        string `json:"tag"`
		PullPolicy string `json:"pullPolicy"`
	} `json:"image"`
	Command struct {
		Name      string   `json:"name"`
		ExtraArgs []string `json:"extraArgs"`
	} `json:"command"`
	HostPID        bool `json:"hostPID"`
	HostNetwork    bool `json:"hostNetwork"`
	ServiceAccount struct {
		Create bool `json:"create"`
	} `json:"serviceAccount"`
	ClusterRole struct {
		Create bool `json:"create"`
	} `json:"clusterRole"`
	PodSecurityContext *corev1.PodSecurityContext `json:"podSecurityContext"`
	SecurityContext    *corev1.SecurityContext    `json:"securityContext"`
	Tolerations        []corev1.Toleration        `json:"tolerations"`
	ExtraVolumes       []corev1.Volume            `json:"extraVolumes"`
	ExtraVolumeMounts  []corev1.VolumeMount       `json:"extraVolumeMounts"`
	Ports              map[string]struct {
		Enabled       bool   `json:"enabled"`
		ContainerPort int32  `json:"containerPort"`
		ServicePort   int32  `json:"servicePort"`
		Protocol      string `json:"protocol"`
	} `json:"ports"`
	PodAnnotations  map[string]string           `json:"podAnnotations"`
	UseGOMEMLIMIT   bool                        `json:"useGOMEMLIMIT"`
	Resources       corev1.ResourceRequirements `json:"resources"`
	LivenessProbe   *corev1.Probe               `json:"livenessProbe"`
	ReadinessProbe  *corev1.Probe               `json:"readinessProbe"`
	AlternateConfig map[string]any              `json:"alternateConfig"`
}

func TestKubernetesHelmValues(t *testing.T) {
	b := readFile(t, kubernetesDir+"/helm-values.yaml")
	var v helmValues
	require.NoError(t, unmarshalStrict(b, &v), "helm-values.yaml")

	require.Equal(t, "daemonset", v.Mode)
	require.True(t, v.HostPID)
	require.False(t, v.HostNetwork)
	require.False(t, v.ClusterRole.Create, "the agent reads no Kubernetes API")

	// Same pod as daemonset.yaml: image, binary, security, mounts, resources.
	m := loadManifest(t, "daemonset.yaml")
	ds := only[appsv1.DaemonSet](t, m, agentName)
	c := ds.Spec.Template.Spec.Containers[0]
	require.Equal(t, c.Image, v.Image.Repository+":"+v.Image.Tag)
	require.Equal(t, c.Command[0], "/"+v.Command.Name, "the chart runs /<command.name>")
	checkAgentSecurityContext(t, v.SecurityContext)
	require.Equal(t, ds.Spec.Template.Spec.SecurityContext, v.PodSecurityContext)
	require.Equal(t, c.Resources, v.Resources)
	require.Equal(t, ds.Spec.Template.Spec.Tolerations, v.Tolerations)
	var dsHost []corev1.Volume
	for _, vol := range ds.Spec.Template.Spec.Volumes {
		if vol.HostPath != nil {
			dsHost = append(dsHost, vol)
		}
	}
	require.ElementsMatch(t, dsHost, v.ExtraVolumes, "extraVolumes must be daemonset.yaml's host directories")
	var dsHostMounts []corev1.VolumeMount
	for _, vm := range c.VolumeMounts {
		if slices.ContainsFunc(dsHost, func(vol corev1.Volume) bool { return vol.Name == vm.Name }) {
			dsHostMounts = append(dsHostMounts, vm)
		}
	}
	require.ElementsMatch(t, dsHostMounts, v.ExtraVolumeMounts)

	// The chart's default receiver ports are off; the metrics ports are on
	// and match the annotations, the probes and the config.
	for _, p := range []string{"otlp", "otlp-http", "jaeger-compact", "jaeger-thrift", "jaeger-grpc", "zipkin"} {
		port, ok := v.Ports[p]
		require.True(t, ok && !port.Enabled, "ports.%s must be disabled: the agent receives nothing", p)
	}
	enabled := map[int32]bool{}
	for _, p := range v.Ports {
		if p.Enabled {
			enabled[p.ContainerPort] = true
		}
	}
	require.Equal(t, ds.Spec.Template.Annotations, v.PodAnnotations)
	promPort, err := strconv.Atoi(v.PodAnnotations["prometheus.io/port"])
	require.NoError(t, err)
	require.True(t, enabled[int32(promPort)], "port %d of prometheus.io/port is not enabled", promPort) //nolint:gosec // a port
	for name, p := range map[string]*corev1.Probe{"liveness": v.LivenessProbe, "readiness": v.ReadinessProbe} {
		require.NotNil(t, p, name)
		require.NotNil(t, p.HTTPGet, name)
		require.True(t, enabled[p.HTTPGet.Port.IntVal], "%s probe port %s is not enabled", name, p.HTTPGet.Port.String())
	}

	// alternateConfig is the DaemonSet's config, and otelcol-ebpf accepts it.
	require.NotEmpty(t, v.AlternateConfig)
	cm := only[corev1.ConfigMap](t, m, "otelcol-ebpf-config")
	var dsConfig map[string]any
	require.NoError(t, yaml.Unmarshal([]byte(cm.Data["config.yaml"]), &dsConfig))
	// Read again with the YAML decoder: the JSON path above turns every
	// number into a float.
	var values struct {
		AlternateConfig map[string]any `yaml:"alternateConfig"`
	}
	require.NoError(t, yaml.Unmarshal(b, &values))
	require.Equal(t, dsConfig, values.AlternateConfig, "alternateConfig must be the config of daemonset.yaml's ConfigMap")
	helmConfig, err := yaml.Marshal(values.AlternateConfig)
	require.NoError(t, err)
	validateWithCollector(t, "alternateConfig in helm-values.yaml", string(helmConfig))
	promEndpoint := lookup(t, "alternateConfig", values.AlternateConfig, "exporters", "prometheus", "endpoint").(string)
	require.Equal(t, promPort, endpointPort(t, "alternateConfig prometheus exporter", promEndpoint))
}

func TestDocDeploymentConfigsValidate(t *testing.T) {
	// Every complete collector config in docs/deployment.md (the systemd
	// config, the direct-to-Tempo config) is one otelcol-ebpf accepts. Tempo
	// itself cannot run on the test machines: these are validated, not run.
	var n int
	for i, block := range fencedBlocks(t, deploymentDoc, "yaml") {
		var top map[string]any
		require.NoError(t, yaml.Unmarshal([]byte(block), &top), "%s yaml block %d", deploymentDoc, i)
		if top["receivers"] == nil || top["service"] == nil {
			continue // a fragment
		}
		label := fmt.Sprintf("%s yaml block %d", deploymentDoc, i)
		checkConfigStructure(t, label, top)
		validateWithCollector(t, label, block)
		n++
	}
	require.GreaterOrEqual(t, n, 2, "%s: want the systemd and the Tempo configs", deploymentDoc)
}

// --- small helpers --------------------------------------------------------

func objectMeta(o any) struct{ Name, Namespace string } {
	type named interface {
		GetName() string
		GetNamespace() string
	}
	n := o.(named)
	return struct{ Name, Namespace string }{n.GetName(), n.GetNamespace()}
}

// subset returns the entries of labels whose keys are in want.
func subset(labels, want map[string]string) map[string]string {
	out := map[string]string{}
	for k := range want {
		if v, ok := labels[k]; ok {
			out[k] = v
		}
	}
	return out
}

// flagValue returns the value of --name=value in args.
func flagValue(t *testing.T, args []string, name string) string {
	t.Helper()
	for _, a := range args {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	t.Fatalf("%v has no %s=", args, name)
	return ""
}

func mountOf(t *testing.T, mounts []corev1.VolumeMount, dir string) corev1.VolumeMount {
	t.Helper()
	for _, vm := range mounts {
		if vm.MountPath == dir {
			return vm
		}
	}
	t.Fatalf("nothing is mounted at %s", dir)
	return corev1.VolumeMount{}
}

// containerPort resolves a port name or number against the container's ports.
func containerPort(t *testing.T, c corev1.Container, port string) int32 {
	t.Helper()
	for _, p := range c.Ports {
		if p.Name == port || strconv.Itoa(int(p.ContainerPort)) == port {
			return p.ContainerPort
		}
	}
	t.Fatalf("container %s declares no port %q", c.Name, port)
	return 0
}

func allows(rules []rbacv1.PolicyRule, group, resource, verb string) bool {
	for _, r := range rules {
		if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
			return true
		}
	}
	return false
}
