//go:build linux

package capture

import (
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/stretchr/testify/require"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/privileged"
)

// TestMissingCapabilitiesNamesExactlyWhatLacks: the error lists the
// capabilities absent from the effective set, and CAP_SYS_ADMIN stands in
// for both (the kernel's bpf_capable and perfmon_capable accept it).
func TestMissingCapabilitiesNamesExactlyWhatLacks(t *testing.T) {
	for _, tc := range []struct {
		name string
		eff  []uint
		want string // error prefix; "" for none
	}{
		{"none", nil, "missing capabilities CAP_BPF, CAP_PERFMON: run the collector as root or grant CAP_BPF and CAP_PERFMON"},
		{"bpf only", []uint{capBPF}, "missing capability CAP_PERFMON: "},
		{"perfmon only", []uint{capPerfmon}, "missing capability CAP_BPF: "},
		{"both", []uint{capBPF, capPerfmon}, ""},
		{"sys_admin", []uint{capSysAdmin}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := missingCapabilities(func(c uint) bool {
				for _, e := range tc.eff {
					if e == c {
						return true
					}
				}
				return false
			})
			if tc.want == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			require.True(t, strings.HasPrefix(err.Error(), tc.want), "%v", err)
		})
	}
}

// TestCheckCapabilitiesReadsEffectiveSet compares what capget(2) gives
// checkCapabilities (two 32-bit words: CAP_PERFMON and CAP_BPF are in the
// second) with the kernel's CapEff line in /proc/self/status.
func TestCheckCapabilitiesReadsEffectiveSet(t *testing.T) {
	status, err := os.ReadFile("/proc/self/status")
	require.NoError(t, err)
	var eff uint64
	found := false
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			eff, err = strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			require.NoError(t, err)
			found = true
		}
	}
	require.True(t, found, "CapEff in /proc/self/status")
	want := missingCapabilities(func(c uint) bool { return eff&(1<<c) != 0 })
	got := checkCapabilities()
	if want == nil {
		require.NoError(t, got, "CapEff %x", eff)
		return
	}
	require.EqualError(t, got, want.Error(), "CapEff %x", eff)
}

// A program the verifier really rejects (it returns R0 without setting it)
// gives the error Start shows: it says the verifier rejected the programs,
// what to do, and ends with the verifier's own log.
func TestExplainLoadErrorOnAVerifierRejection(t *testing.T) {
	privileged.Require(t)
	_, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "bad_exit", Type: ebpf.TracePoint, License: "GPL",
		Instructions: asm.Instructions{asm.Return()},
	})
	require.Error(t, err, "the verifier accepted an exit with R0 unset")
	msg := explainLoadError(err).Error()
	require.Contains(t, msg, "the kernel verifier rejected the capture programs")
	require.Contains(t, msg, "report it with this log")
	require.Contains(t, msg, "R0 !read_ok", "the verifier's log closes the message")
}
