// cri-relay: unary gRPC calls through Go's gRPC, dialled as crictl 1.26 and
// kubelet dial a unix socket: the socket path as the dial target, with a
// context dialer, so the path is sent as the HTTP/2 :authority.
//
// Usage: cri-relay SOCKET, then one call per stdin line, "METHOD HEXREQUEST"
// (METHOD as /runtime.v1.RuntimeService/Version); each answer is one line,
// "OK HEXRESPONSE" or "ERR CODE MESSAGE". All calls share one connection, as
// kubelet's do. Messages stay bytes (a codec that passes them through), so
// the caller encodes and decodes them. Built from Debian's golang-go and
// golang-google-grpc-dev in GOPATH mode: no module download.
package main

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// rawCodec hands the caller's bytes to gRPC as the message.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func main() {
	socket := os.Args[1]
	conn, err := grpc.Dial(socket, grpc.WithInsecure(), grpc.WithBlock(),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", addr)
		}))
	if err != nil {
		fmt.Println("DIAL", err)
		os.Exit(1)
	}
	defer conn.Close()
	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<24)
	for in.Scan() {
		parts := strings.SplitN(in.Text(), " ", 2)
		req, _ := hex.DecodeString(parts[1])
		var resp []byte
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		err := conn.Invoke(ctx, parts[0], &req, &resp, grpc.ForceCodec(rawCodec{}))
		cancel()
		if err != nil {
			s := status.Convert(err)
			fmt.Printf("ERR %d %s\n", s.Code(), strings.ReplaceAll(s.Message(), "\n", " "))
		} else {
			fmt.Printf("OK %s\n", hex.EncodeToString(resp))
		}
	}
}
