package cgroupv2

import (
	"os"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestUnder(t *testing.T) {
	tests := []struct {
		cg, root, dir string
		want          bool
	}{
		{"/a/b", "/sys/fs/cgroup", "/sys/fs/cgroup/a", true},
		{"/a", "/sys/fs/cgroup", "/sys/fs/cgroup/a", true},
		{"/ab", "/sys/fs/cgroup", "/sys/fs/cgroup/a", false},
		{"/a/b", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/unified/a/", true},
		{"/x", "/sys/fs/cgroup", "/sys/fs/cgroup", true},
		{"/x", "/sys/fs/cgroup", "/elsewhere/x", false},
	}
	for _, tt := range tests {
		require.Equal(t, tt.want, Under(tt.cg, tt.root, tt.dir), "%+v", tt)
	}
}

func TestRootAndOf(t *testing.T) {
	root, err := Root()
	if err != nil {
		t.Skipf("no cgroup v2 hierarchy on this machine: %v", err)
	}
	require.DirExists(t, root)
	cg, ok := Of(os.Getpid())
	require.True(t, ok)
	require.True(t, Under(cg, root, root))
}
