//go:build linux

package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"
)

const pgBinDir = "/usr/lib/postgresql/15/bin"

// pgServer is a throwaway PostgreSQL 15 cluster: initdb in a temporary
// directory as user postgres, listening on a loopback port only, every
// process of it inside the server cgroup.
type pgServer struct {
	Port    int
	Dir     string
	DataDir string
}

func runAsPostgres(ctx context.Context, g *cgroup, args ...string) error {
	cmd := exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--"}, args...)...)
	if g != nil {
		// The server (started in the cgroup) gets the niceness of the
		// processes under test.
		name, nargs := niced("runuser", append([]string{"-u", "postgres", "--"}, args...)...)
		cmd = exec.CommandContext(ctx, name, nargs...)
		g.into(cmd)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}

func startPG(ctx context.Context, g *cgroup) (*pgServer, error) {
	if _, err := os.Stat(filepath.Join(pgBinDir, "postgres")); err != nil {
		return nil, fmt.Errorf("PostgreSQL 15 not found in %s (apt-get install postgresql-15): %w", pgBinDir, err)
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("no postgres user: %w", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	dir, err := os.MkdirTemp("", "ebpfbench-pg-")
	if err != nil {
		return nil, err
	}
	atExit(func() { os.RemoveAll(dir) })
	if err := os.Chown(dir, uid, gid); err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	s := &pgServer{Port: port, Dir: dir, DataDir: filepath.Join(dir, "data")}
	if err := runAsPostgres(ctx, nil, filepath.Join(pgBinDir, "initdb"), "-D", s.DataDir, "-A", "trust", "-U", "postgres",
		"--no-sync", "-E", "UTF8", "--locale=C"); err != nil {
		return nil, err
	}
	// Durability off: the benchmark is about the wire, not the disk.
	opts := fmt.Sprintf("-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c shared_buffers=128MB -c max_connections=50", port, dir)
	// Registered before the start so that a start interrupted half-way
	// is stopped too.
	atExit(func() { s.stop() })
	recordCommand("postgres server (in the server cgroup)", []string{"runuser", "-u", "postgres", "--", filepath.Join(pgBinDir, "pg_ctl"), "-D", "DATADIR", "-w", "-o", opts, "start"})
	if err := runAsPostgres(ctx, g, filepath.Join(pgBinDir, "pg_ctl"), "-D", s.DataDir, "-w", "-t", "60",
		"-l", filepath.Join(dir, "server.log"), "-o", opts, "start"); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *pgServer) stop() {
	if _, err := os.Stat(filepath.Join(s.DataDir, "postmaster.pid")); err != nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := runAsPostgres(ctx, nil, filepath.Join(pgBinDir, "pg_ctl"), "-D", s.DataDir, "-w", "-m", "immediate", "stop"); err != nil {
		logf("pg_ctl stop: %v", err)
	}
}

func (s *pgServer) connArgs() []string {
	return []string{"-h", "127.0.0.1", "-p", strconv.Itoa(s.Port), "-U", "postgres"}
}

// initPgbench creates the pgbench tables.
func (s *pgServer) initPgbench(ctx context.Context, scale int) error {
	args := append([]string{"-i", "-q", "-s", strconv.Itoa(scale)}, s.connArgs()...)
	args = append(args, "postgres")
	recordCommand("pgbench init", append([]string{filepath.Join(pgBinDir, "pgbench")}, args...))
	out, err := exec.CommandContext(ctx, filepath.Join(pgBinDir, "pgbench"), args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("pgbench -i: %w\n%s", err, out)
	}
	return nil
}

// pgbenchResult is what one pgbench run reports.
type pgbenchResult struct {
	TPS          float64
	Transactions int64
	Failed       int64
	LatAvgMs     float64
	// Per-transaction latencies from --log (rate runs only), microseconds:
	// Service = time from the transaction's start to its end;
	// Scheduled = time from its scheduled start (includes client lag).
	Service, Scheduled []float64
	// PerSecond is the -P 1 progress: transactions per second, second by
	// second (it shows machine-wide stalls).
	PerSecond []float64
}

var (
	reTPS    = regexp.MustCompile(`(?m)^tps = ([0-9.]+) \(without initial connection time\)`)
	reTx     = regexp.MustCompile(`(?m)^number of transactions actually processed: ([0-9]+)`)
	reFailed = regexp.MustCompile(`(?m)^number of failed transactions: ([0-9]+)`)
	reLatAvg = regexp.MustCompile(`(?m)^latency average = ([0-9.]+) ms`)
	reProg   = regexp.MustCompile(`(?m)^progress: [0-9.]+ s, ([0-9.]+) tps`)
)

type pgbenchRun struct {
	Select  bool    // -S (select-only) instead of TPC-B-like
	Rate    float64 // -R, 0 for saturating
	Seconds int
	Client  *cgroup // the cgroup pgbench runs in
}

// runPgbench runs pgbench -M prepared -c 4 -j 2 for a fixed duration.
func (s *pgServer) runPgbench(ctx context.Context, r pgbenchRun) (*pgbenchResult, error) {
	args := []string{"-M", "prepared", "-c", "4", "-j", "2", "-T", strconv.Itoa(r.Seconds), "-n", "-P", "1"}
	if r.Select {
		args = append(args, "-S")
	}
	var logDir string
	if r.Rate > 0 {
		var err error
		if logDir, err = os.MkdirTemp("", "ebpfbench-pglog-"); err != nil {
			return nil, err
		}
		defer os.RemoveAll(logDir)
		args = append(args, "-R", strconv.FormatFloat(r.Rate, 'f', 0, 64), "--log", "--log-prefix", filepath.Join(logDir, "tx"))
	}
	args = append(args, s.connArgs()...)
	args = append(args, "postgres")
	kind := "pgbench TPC-B-like"
	switch {
	case r.Rate > 0:
		kind = "pgbench select-only, fixed rate"
	case r.Select:
		kind = "pgbench select-only"
	}
	recordCommand(kind, append([]string{filepath.Join(pgBinDir, "pgbench")}, args...))
	cmd := command(ctx, filepath.Join(pgBinDir, "pgbench"), args...)
	if r.Client != nil {
		r.Client.into(cmd)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("pgbench %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	text := string(out)
	res := &pgbenchResult{}
	if m := reTPS.FindStringSubmatch(text); m != nil {
		res.TPS, _ = strconv.ParseFloat(m[1], 64)
	} else {
		return nil, fmt.Errorf("pgbench: no tps in output:\n%s", text)
	}
	if m := reTx.FindStringSubmatch(text); m != nil {
		res.Transactions, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reFailed.FindStringSubmatch(text); m != nil {
		res.Failed, _ = strconv.ParseInt(m[1], 10, 64)
	}
	if m := reLatAvg.FindStringSubmatch(text); m != nil {
		res.LatAvgMs, _ = strconv.ParseFloat(m[1], 64)
	}
	for _, m := range reProg.FindAllStringSubmatch(text, -1) {
		v, _ := strconv.ParseFloat(m[1], 64)
		res.PerSecond = append(res.PerSecond, v)
	}
	if logDir != "" {
		if err := readTxLogs(logDir, res); err != nil {
			return nil, err
		}
	}
	return res, nil
}

// readTxLogs reads pgbench's per-transaction logs (one file per thread).
// A line is "client_id transaction_no time script_no time_epoch time_us
// schedule_lag"; with --rate, time counts from the scheduled start, so the
// transaction's own duration is time - schedule_lag.
func readTxLogs(dir string, res *pgbenchResult) error {
	files, err := filepath.Glob(filepath.Join(dir, "tx.*"))
	if err != nil || len(files) == 0 {
		return fmt.Errorf("no pgbench transaction logs in %s", dir)
	}
	for _, name := range files {
		f, err := os.Open(name)
		if err != nil {
			return err
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			fld := strings.Fields(sc.Text())
			if len(fld) < 7 || fld[2] == "skipped" || fld[2] == "failed" {
				continue
			}
			lat, err1 := strconv.ParseFloat(fld[2], 64)
			lag, err2 := strconv.ParseFloat(fld[6], 64)
			if err1 != nil || err2 != nil {
				continue
			}
			res.Scheduled = append(res.Scheduled, lat)
			res.Service = append(res.Service, lat-lag)
		}
		f.Close()
	}
	return nil
}
