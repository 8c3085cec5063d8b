package transport

import (
	"errors"
	"io"
	"net"
	"testing"
)

// A Handoff's address accepts across turns: a connection made between two
// turns waits and is served by the next; ending a turn does not close the
// socket; closing the Handoff does, and every turn's Accept fails.
func TestHandoffTurns(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h := NewHandoff(ln)
	serve := func(l net.Listener, msg string) chan error {
		errc := make(chan error, 1)
		go func() {
			c, err := l.Accept()
			if err != nil {
				errc <- err
				return
			}
			_, err = c.Write([]byte(msg))
			c.Close()
			errc <- err
		}()
		return errc
	}
	read := func(c net.Conn) string {
		b, _ := io.ReadAll(c)
		c.Close()
		return string(b)
	}
	first := h.Turn()
	errc := serve(first, "standby")
	c1, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	if got := read(c1); got != "standby" || <-errc != nil {
		t.Fatalf("first turn served %q", got)
	}
	first.Close()
	if _, err := first.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("accept after the turn ended: %v", err)
	}
	// Between turns: the connection is made, and waits.
	c2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatalf("the address refused between turns: %v", err)
	}
	second := h.Turn()
	if got := read2(t, c2, serve(second, "leader"), read); got != "leader" {
		t.Fatalf("second turn served %q", got)
	}
	h.Close()
	h.Wait()
	if _, err := second.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("accept after Close: %v", err)
	}
	if c, err := net.Dial("tcp", ln.Addr().String()); err == nil {
		c.Close()
		t.Fatal("the address still accepts after Close")
	}
}

func read2(t *testing.T, c net.Conn, errc chan error, read func(net.Conn) string) string {
	got := read(c)
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	return got
}
