package procmeta

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestContainerID(t *testing.T) {
	id := strings.Repeat("ab12", 16)
	tests := []struct {
		name, cgroup, want string
	}{
		{"host", "0::/user.slice/user-0.slice/session-1.scope\n", ""},
		{"docker v2", "0::/system.slice/docker-" + id + ".scope\n", id},
		{"containerd under kubepods", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-" + id + ".scope\n", id},
		{"crio", "0::/kubepods/besteffort/pod12/crio-" + id + "\n", id},
		{"cgroup v1 docker", "12:memory:/docker/" + id + "\n11:cpu:/docker/" + id + "\n", id},
		{"not hex", "0::/system.slice/docker-" + strings.Repeat("zz", 32) + ".scope\n", ""},
		{"garbage", "no colons here", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.want, ContainerID(tt.cgroup))
		})
	}
}

func TestReadAndCache(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "42")
	require.NoError(t, os.MkdirAll(dir, 0o755))
	require.NoError(t, os.Symlink("/usr/lib/postgresql/15/bin/postgres", filepath.Join(dir, "exe")))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "cmdline"), []byte("postgres\x00-D\x00/data\x00"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(dir, "cgroup"), []byte("0::/\n"), 0o644))

	c := NewCache(root, 1)
	info := c.Get(42, "postgres")
	require.Equal(t, Info{PID: 42, Executable: "postgres", ExecutablePath: "/usr/lib/postgresql/15/bin/postgres", CommandLine: "postgres -D /data"}, info)

	gone := c.Get(43, "worker")
	require.Equal(t, "worker", gone.Executable, "an exited process keeps its kernel name")
	require.Len(t, c.m, 1, "the cache stays within its bound")
}
