// Package pgserver starts a throwaway PostgreSQL 15 server for tests: a
// fresh cluster in a temporary directory, owned by the postgres user,
// listening on a free loopback port and a Unix socket in that directory,
// trust authentication, stopped ("pg_ctl stop -m immediate") when the test
// ends.
package pgserver

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/cgroup"
)

// BinDir holds the PostgreSQL 15 server binaries on Debian.
const BinDir = "/usr/lib/postgresql/15/bin"

// Server is a running test cluster.
type Server struct {
	Port int
	// SocketDir holds the Unix socket .s.PGSQL.<Port>.
	SocketDir string
	DataDir   string
}

// Addr is the loopback TCP address.
func (s *Server) Addr() string { return fmt.Sprintf("127.0.0.1:%d", s.Port) }

// URL is a connection string for database db over TCP.
func (s *Server) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", s.Port, db)
}

// SocketPath is the server's Unix socket.
func (s *Server) SocketPath() string {
	return filepath.Join(s.SocketDir, fmt.Sprintf(".s.PGSQL.%d", s.Port))
}

// Start initialises and starts a cluster. When g is not nil the server (and
// every backend it forks) runs inside that cgroup. It needs root (to run as
// postgres) and the Debian PostgreSQL 15 packages.
func Start(t testing.TB, g *cgroup.Group, settings ...string) *Server {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("starting a PostgreSQL server needs root (runuser -u postgres)")
	}
	if _, err := os.Stat(filepath.Join(BinDir, "postgres")); err != nil {
		t.Fatalf("PostgreSQL 15 server binaries not found in %s (apt-get install postgresql-15): %v", BinDir, err)
	}
	pgUser, err := user.Lookup("postgres")
	if err != nil {
		t.Fatalf("no postgres user (installed with postgresql-15): %v", err)
	}
	uid, _ := strconv.Atoi(pgUser.Uid)
	gid, _ := strconv.Atoi(pgUser.Gid)

	dir, err := os.MkdirTemp("", "pgserver-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chown(dir, uid, gid); err != nil {
		t.Fatal(err)
	}
	s := &Server{Port: freePort(t), SocketDir: dir, DataDir: filepath.Join(dir, "data")}
	run(t, nil, filepath.Join(BinDir, "initdb"), "-D", s.DataDir, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C")

	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off", s.Port, dir)
	for _, kv := range settings {
		opts += " -c " + kv
	}
	run(t, g, filepath.Join(BinDir, "pg_ctl"), "-D", s.DataDir, "-w", "-t", "60", "-l", filepath.Join(dir, "server.log"), "-o", opts, "start")
	t.Cleanup(func() {
		cmd := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(BinDir, "pg_ctl"), "-D", s.DataDir, "-w", "-m", "immediate", "stop")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Errorf("pg_ctl stop: %v\n%s", err, out)
		}
	})
	return s
}

func run(t testing.TB, g *cgroup.Group, args ...string) {
	t.Helper()
	cmd := exec.Command("runuser", append([]string{"-u", "postgres", "--"}, args...)...)
	if g != nil {
		g.Into(cmd)
	}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %v\n%s", args, err, out)
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}
