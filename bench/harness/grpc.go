//go:build linux

package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ebpfotel/ebpfreceiver/internal/testutil/ghz"
)

// grpcServerMain is the "grpc-server" subcommand: a grpc-go server with the
// health service on a loopback address, until SIGTERM or SIGINT.
func grpcServerMain(args []string) error {
	fs := flag.NewFlagSet("grpc-server", flag.ExitOnError)
	addr := fs.String("addr", "127.0.0.1:0", "listen address (loopback)")
	_ = fs.Parse(args)
	if host, _, err := net.SplitHostPort(*addr); err != nil || !net.ParseIP(host).IsLoopback() {
		return fmt.Errorf("grpc-server listens on loopback only, not %q", *addr)
	}
	ln, err := net.Listen("tcp", *addr)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	hs := health.NewServer()
	hs.SetServingStatus("", grpc_health_v1.HealthCheckResponse_SERVING)
	grpc_health_v1.RegisterHealthServer(srv, hs)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-sig
		srv.Stop()
	}()
	fmt.Println("listening", ln.Addr())
	return srv.Serve(ln)
}

type grpcServer struct {
	Port int
	cmd  *exec.Cmd
}

// startGRPCServer runs this binary's grpc-server subcommand in g.
func startGRPCServer(ctx context.Context, g *cgroup) (*grpcServer, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	name, args := niced(self, "grpc-server", "-addr", fmt.Sprintf("127.0.0.1:%d", port))
	cmd := exec.Command(name, args...)
	recordCommand("gRPC server (in the server cgroup)", cmd.Args)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	g.into(cmd)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s := &grpcServer{Port: port, cmd: cmd}
	atExit(s.stop)
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			return s, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("gRPC server did not listen on %d: %w", port, err)
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return nil, err
		}
	}
}

func (s *grpcServer) stop() {
	if s.cmd.ProcessState != nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
}

type ghzRun struct {
	Bin, Protoset string
	Port          int
	Concurrency   int
	Connections   int
	RPS           float64 // 0: as fast as possible
	Seconds       int
	Client        *cgroup
}

func runGhz(ctx context.Context, r ghzRun) (*ghz.Result, error) {
	args := []string{
		"--insecure", "--protoset", r.Protoset, "--call", ghz.HealthMethod, "-d", "{}",
		"-c", strconv.Itoa(r.Concurrency), "--connections", strconv.Itoa(r.Connections),
		"-z", fmt.Sprintf("%ds", r.Seconds), "-O", "json",
	}
	if r.RPS > 0 {
		args = append(args, "--rps", strconv.FormatFloat(r.RPS, 'f', 0, 64))
	}
	args = append(args, fmt.Sprintf("127.0.0.1:%d", r.Port))
	kind := "ghz saturating"
	if r.RPS > 0 {
		kind = "ghz fixed rate"
	}
	recordCommand(kind, append([]string{r.Bin}, args...))
	cmd := command(ctx, r.Bin, args...)
	if r.Client != nil {
		r.Client.into(cmd)
	}
	return ghz.Run(cmd)
}
