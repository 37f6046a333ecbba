// Command demoapp is the workload of the end-to-end test and of `make demo`:
// a gRPC service, shop.Catalog, whose one method GetItem looks an item up in
// PostgreSQL, and a client that calls it.
//
//	demoapp -mode server -listen 127.0.0.1:0 -dsn postgres://...
//	demoapp -mode client -addr 127.0.0.1:PORT -calls 20
//
// The server prints "listening HOST:PORT" once it accepts calls. A GetItem
// request is an item id in decimal; the answer is the item's name, or the
// status NOT_FOUND when no row has that id. The server runs every query on
// one pgx connection (pgx's default statement cache: the statement is
// prepared once, then only bound and executed). The client asks for ids
// 1, 2, ..., -ids, 1, 2, ... (so with -ids 5 and items 1 to 3, two calls in
// five are NOT_FOUND), then prints "ok=N not_found=M other=K". With
// -calls 0 it calls until interrupted.
//
// gRPC messages are raw bytes (a codec named "bytes"): no generated code.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

const (
	service = "shop.Catalog"
	method  = "/" + service + "/GetItem"
)

// bytesCodec sends *[]byte messages unchanged.
type bytesCodec struct{}

func (bytesCodec) Name() string { return "bytes" }

func (bytesCodec) Marshal(v any) ([]byte, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("bytes codec: cannot marshal %T", v)
	}
	return *b, nil
}

func (bytesCodec) Unmarshal(data []byte, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("bytes codec: cannot unmarshal into %T", v)
	}
	*b = append((*b)[:0], data...)
	return nil
}

// catalog serves GetItem from one database connection.
type catalog struct {
	mu sync.Mutex
	db *pgx.Conn
}

func (c *catalog) getItem(ctx context.Context, req []byte) ([]byte, error) {
	id, err := strconv.Atoi(string(req))
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "item id %q: %v", req, err)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var name string
	err = c.db.QueryRow(ctx, "SELECT name FROM items WHERE id = $1", id).Scan(&name)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, status.Errorf(codes.NotFound, "no item %d", id)
	case err != nil:
		return nil, status.Errorf(codes.Internal, "query item %d: %v", id, err)
	}
	return []byte(name), nil
}

var catalogDesc = grpc.ServiceDesc{
	ServiceName: service,
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "GetItem",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var in []byte
			if err := dec(&in); err != nil {
				return nil, err
			}
			out, err := srv.(*catalog).getItem(ctx, in)
			if err != nil {
				return nil, err
			}
			return &out, nil
		},
	}},
}

func serve(ctx context.Context, listen, dsn string) error {
	db, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("connect to PostgreSQL: %w", err)
	}
	defer db.Close(context.Background())
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(bytesCodec{}))
	srv.RegisterService(&catalogDesc, &catalog{db: db})
	go func() {
		<-ctx.Done()
		srv.GracefulStop()
	}()
	fmt.Printf("listening %s\n", ln.Addr())
	return srv.Serve(ln)
}

func call(ctx context.Context, addr string, calls, ids int, interval time.Duration) error {
	cc, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(bytesCodec{})))
	if err != nil {
		return err
	}
	defer cc.Close()
	var ok, notFound, other int
	for i := 0; calls == 0 || i < calls; i++ {
		if i > 0 && interval > 0 {
			select {
			case <-ctx.Done():
				calls = i
			case <-time.After(interval):
			}
		}
		if ctx.Err() != nil {
			break
		}
		in := []byte(strconv.Itoa(i%ids + 1))
		var out []byte
		callCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := cc.Invoke(callCtx, method, &in, &out)
		cancel()
		switch status.Code(err) {
		case codes.OK:
			ok++
		case codes.NotFound:
			notFound++
		default:
			other++
			fmt.Fprintf(os.Stderr, "GetItem(%s): %v\n", in, err)
		}
		if interval > 0 {
			fmt.Printf("GetItem(%s): %s\n", in, describe(out, err))
		}
	}
	fmt.Printf("ok=%d not_found=%d other=%d\n", ok, notFound, other)
	if other > 0 {
		return fmt.Errorf("%d calls failed", other)
	}
	return nil
}

func describe(out []byte, err error) string {
	if err != nil {
		return status.Code(err).String()
	}
	return fmt.Sprintf("OK %q", out)
}

func main() {
	mode := flag.String("mode", "server", "server or client")
	listen := flag.String("listen", "127.0.0.1:0", "server: address to listen on")
	dsn := flag.String("dsn", "", "server: PostgreSQL connection string")
	addr := flag.String("addr", "", "client: server address")
	calls := flag.Int("calls", 20, "client: calls to make (0: until interrupted)")
	ids := flag.Int("ids", 5, "client: ask for ids 1 to this, round robin")
	interval := flag.Duration("interval", 0, "client: pause between calls")
	flag.Parse()

	if err := run(*mode, *listen, *dsn, *addr, *calls, *ids, *interval); err != nil {
		fmt.Fprintln(os.Stderr, "demoapp:", err)
		os.Exit(1)
	}
}

func run(mode, listen, dsn, addr string, calls, ids int, interval time.Duration) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch mode {
	case "server":
		return serve(ctx, listen, dsn)
	case "client":
		if ids < 1 {
			return errors.New("-ids must be at least 1")
		}
		return call(ctx, addr, calls, ids, interval)
	default:
		return fmt.Errorf("unknown -mode %q", mode)
	}
}
