package deploy_test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

const unitPath = "systemd/otelcol-ebpf.service"

// unitFile is a parsed systemd unit: section -> key -> every assignment in
// order (list settings may be given several times).
type unitFile map[string]map[string][]string

// parseUnit reads a unit the way systemd does for what this test needs:
// [Section] headers, Key=Value lines, # and ; comments, and lines continued
// with a trailing backslash.
func parseUnit(t *testing.T, b []byte) unitFile {
	t.Helper()
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(b))
	var cont strings.Builder
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if cont.Len() == 0 && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if l, ok := strings.CutSuffix(line, `\`); ok {
			cont.WriteString(l + " ")
			continue
		}
		cont.WriteString(line)
		line = cont.String()
		cont.Reset()
		if strings.HasPrefix(line, "[") {
			require.True(t, strings.HasSuffix(line, "]"), "line %d: bad section header %q", n, line)
			section = line[1 : len(line)-1]
			u[section] = map[string][]string{}
			continue
		}
		require.NotEmpty(t, section, "line %d: assignment outside a section", n)
		key, value, ok := strings.Cut(line, "=")
		require.True(t, ok, "line %d: %q is not Key=Value", n, line)
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		u[section][key] = append(u[section][key], value)
	}
	require.NoError(t, sc.Err())
	require.Zero(t, cont.Len(), "the unit ends in a continued line")
	return u
}

// one returns the single value of a setting.
func (u unitFile) one(t *testing.T, section, key string) string {
	t.Helper()
	v := u[section][key]
	require.Len(t, v, 1, "[%s] %s: want exactly one assignment", section, key)
	return v[0]
}

// words returns the space-separated words of every assignment of a list
// setting (an empty assignment resets the list, as in systemd).
func (u unitFile) words(section, key string) []string {
	var out []string
	for _, v := range u[section][key] {
		if v == "" {
			out = nil
			continue
		}
		out = append(out, strings.Fields(v)...)
	}
	return out
}

func TestSystemdUnitSettings(t *testing.T) {
	u := parseUnit(t, readFile(t, unitPath))
	for _, s := range []string{"Unit", "Service", "Install"} {
		require.Contains(t, u, s, "section [%s]", s)
	}

	// ExecStart: the installed binary and the config path of the docs.
	exec := strings.Fields(u.one(t, "Service", "ExecStart"))
	require.Equal(t, "/usr/local/bin/otelcol-ebpf", exec[0])
	config := flagValue(t, exec[1:], "--config")
	doc := string(readFile(t, deploymentDoc))
	require.Contains(t, doc, exec[0], "docs/deployment.md must install the binary where ExecStart runs it")
	require.Contains(t, doc, config, "docs/deployment.md must write the config where ExecStart reads it")
	require.Regexp(t, regexp.MustCompile("(?m)^# "+regexp.QuoteMeta(config)+"$"), doc,
		"docs/deployment.md must show the config file (a yaml block starting with the comment `# %s`)", config)

	// A dedicated unprivileged user, created in the docs.
	user := u.one(t, "Service", "User")
	require.NotContains(t, []string{"", "root", "0"}, user)
	require.Contains(t, doc, "useradd --system", "docs/deployment.md must create the user")
	require.Contains(t, doc, user)

	// The same four capabilities as the Kubernetes agent, in both sets.
	want := make([]string, 0, len(agentCapabilities))
	for _, c := range agentCapabilities {
		want = append(want, "CAP_"+c)
	}
	require.Equal(t, want, sortedCopy(u.words("Service", "CapabilityBoundingSet")))
	require.Equal(t, want, sortedCopy(u.words("Service", "AmbientCapabilities")))

	// Hardening that leaves bpf(2) and /proc working.
	for key, value := range map[string]string{
		"NoNewPrivileges":        "yes",
		"ProtectSystem":          "strict",
		"ProtectHome":            "yes",
		"PrivateTmp":             "yes",
		"ProtectKernelTunables":  "yes",
		"ProtectKernelModules":   "yes",
		"ProtectControlGroups":   "yes",
		"RestrictSUIDSGID":       "yes",
		"MemoryDenyWriteExecute": "yes",
	} {
		require.Equal(t, value, u.one(t, "Service", key), "[Service] %s", key)
	}
	filter := u.words("Service", "SystemCallFilter")
	for _, call := range []string{"@system-service", "bpf", "perf_event_open"} {
		require.Contains(t, filter, call, "SystemCallFilter must allow %s", call)
	}
	// Settings that would break the receiver: it must see every process in
	// /proc, and capabilities inside a user namespace cannot load tracing
	// programs.
	for key, bad := range map[string]string{"ProtectProc": "invisible", "ProcSubset": "pid", "PrivateUsers": "yes", "PrivatePIDs": "yes"} {
		require.NotContains(t, u["Service"][key], bad, "[Service] %s=%s hides what the receiver needs", key, bad)
	}
	// tracefs is required, not mounted by the service (no CAP_SYS_ADMIN).
	require.NotContains(t, want, "CAP_SYS_ADMIN")
	require.Contains(t, u.words("Unit", "RequiresMountsFor"), "/sys/kernel/tracing")
}

func TestSystemdUnitVerify(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed (Debian package systemd): the unit is not verified, TestSystemdUnitSettings still checks it")
	}
	// verify fails when ExecStart's binary does not exist, and this machine
	// need not have it installed in /usr/local/bin: verify a copy that runs
	// this test binary instead, everything else unchanged.
	self, err := os.Executable()
	require.NoError(t, err)
	b := readFile(t, unitPath)
	const installed = "ExecStart=/usr/local/bin/otelcol-ebpf "
	require.Equal(t, 1, bytes.Count(b, []byte(installed)), "ExecStart line")
	copyPath := filepath.Join(t.TempDir(), filepath.Base(unitPath))
	require.NoError(t, os.WriteFile(copyPath, bytes.Replace(b, []byte(installed), []byte("ExecStart="+self+" "), 1), 0o600))

	cmd := exec.Command(analyze, "verify", "--man=no", copyPath)
	out, err := cmd.CombinedOutput()
	require.NoError(t, err, "systemd-analyze verify:\n%s", out)
	// verify reports unknown settings and bad values as warnings and still
	// exits 0; it may also warn about other units of the host.
	var ours []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "otelcol-ebpf") {
			ours = append(ours, line)
		}
	}
	require.Empty(t, ours, "systemd-analyze verify warns about the unit:\n%s", out)
}
