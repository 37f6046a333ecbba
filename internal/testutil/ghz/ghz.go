// Package ghz runs the ghz gRPC load generator against grpc-go's health
// service, for the tests and the benchmark harness: the service's
// descriptor for ghz, and ghz's JSON report.
package ghz

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"

	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protodesc"
	"google.golang.org/protobuf/types/descriptorpb"
)

// HealthMethod is the unary call made: grpc-go's own health service,
// compiled into the grpc module (ghz's --call form, Service.Method).
const HealthMethod = "grpc.health.v1.Health.Check"

// WriteHealthProtoset writes the health service's descriptor, taken from
// the compiled Go package, as a FileDescriptorSet for ghz --protoset (the
// grpc module ships no .proto source).
func WriteHealthProtoset(path string) error {
	fd := protodesc.ToFileDescriptorProto(grpc_health_v1.File_grpc_health_v1_health_proto)
	set := &descriptorpb.FileDescriptorSet{File: []*descriptorpb.FileDescriptorProto{fd}}
	b, err := proto.Marshal(set)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// Result holds the fields of ghz's JSON report (-O json) that are used.
type Result struct {
	Count   int64   `json:"count"`
	Total   int64   `json:"total"`   // ns
	Average int64   `json:"average"` // ns
	RPS     float64 `json:"rps"`
	Dist    []struct {
		Percentage float64 `json:"percentage"`
		Latency    int64   `json:"latency"` // ns
	} `json:"latencyDistribution"`
	Status map[string]int64 `json:"statusCodeDistribution"`
	Errors map[string]int64 `json:"errorDistribution"`
}

// Percentile is the latency at percentage p of the distribution, in µs
// (0 when ghz did not report it).
func (r *Result) Percentile(p float64) float64 {
	for _, d := range r.Dist {
		if d.Percentage == p {
			return float64(d.Latency) / 1e3
		}
	}
	return 0
}

// Run runs cmd (ghz with -O json among its arguments) and decodes its
// report.
func Run(cmd *exec.Cmd) (*Result, error) {
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("ghz %s: %w\n%s", strings.Join(cmd.Args[1:], " "), err, stderr.String())
	}
	var res Result
	if err := json.Unmarshal(out, &res); err != nil {
		return nil, fmt.Errorf("ghz output: %w\n%.500s", err, out)
	}
	return &res, nil
}
