// Package cgroupv2 finds the cgroup v2 hierarchy and tells whether a
// process's cgroup lies under a directory of it.
package cgroupv2

import (
	"bufio"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Root returns where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup on
// a unified host, /sys/fs/cgroup/unified on a hybrid one.
func Root() (string, error) {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == "cgroup2" {
			return fields[1], nil
		}
	}
	return "", errors.New("no cgroup v2 hierarchy is mounted")
}

// Of reads a process's cgroup v2 path ("0::/path" in /proc/PID/cgroup),
// relative to the hierarchy's root.
func Of(pid int) (string, bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/cgroup")
	if err != nil {
		return "", false
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p, true
		}
	}
	return "", false
}

// Under reports whether the cgroup path cg (relative to the v2 root, as Of
// returns it) is dir or below it; dir is an absolute directory under root.
func Under(cg, root, dir string) bool {
	rel, err := filepath.Rel(root, filepath.Clean(dir))
	if err != nil || strings.HasPrefix(rel, "..") {
		return false
	}
	if rel == "." {
		return true // the root holds everything
	}
	rel = "/" + rel
	return cg == rel || strings.HasPrefix(cg, rel+"/")
}
