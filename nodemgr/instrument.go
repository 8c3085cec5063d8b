package nodemgr

import (
	"context"
	"io"
	"time"

	"github.com/usher-vm/usher/api"
)

// Instrument wraps a driver so that observe is told of every call: its
// name (node_info, list, start, op, prepare_incoming, abort_incoming,
// migrate, stats, console_log, console), how long it took and its error.
// A driver with consoles stays one.
func Instrument(d Driver, observe func(call string, took time.Duration, err error)) Driver {
	i := &instrumented{d: d, obs: observe}
	if c, ok := d.(Consoler); ok {
		return &instrumentedConsoler{instrumented: i, c: c}
	}
	return i
}

type instrumented struct {
	d   Driver
	obs func(string, time.Duration, error)
}

func (i *instrumented) time(call string, t0 time.Time, err error) { i.obs(call, time.Since(t0), err) }

func (i *instrumented) Kind() string               { return i.d.Kind() }
func (i *instrumented) Capabilities() Capabilities { return i.d.Capabilities() }
func (i *instrumented) Events() <-chan GuestEvent  { return i.d.Events() }
func (i *instrumented) Close() error               { return i.d.Close() }
func (i *instrumented) Unwrap() Driver             { return i.d }
func (i *instrumented) NodeInfo(ctx context.Context) (n api.NodeInfo, err error) {
	defer func(t0 time.Time) { i.time("node_info", t0, err) }(time.Now())
	return i.d.NodeInfo(ctx)
}
func (i *instrumented) List(ctx context.Context) (g []GuestInfo, err error) {
	defer func(t0 time.Time) { i.time("list", t0, err) }(time.Now())
	return i.d.List(ctx)
}
func (i *instrumented) Start(ctx context.Context, spec Spec) (err error) {
	defer func(t0 time.Time) { i.time("start", t0, err) }(time.Now())
	return i.d.Start(ctx, spec)
}
func (i *instrumented) Op(ctx context.Context, name string, op api.Op, o OpOptions) (err error) {
	defer func(t0 time.Time) { i.time("op_"+string(op), t0, err) }(time.Now())
	return i.d.Op(ctx, name, op, o)
}
func (i *instrumented) PrepareIncoming(ctx context.Context, spec Spec) (err error) {
	defer func(t0 time.Time) { i.time("prepare_incoming", t0, err) }(time.Now())
	return i.d.PrepareIncoming(ctx, spec)
}
func (i *instrumented) AbortIncoming(ctx context.Context, name string) (err error) {
	defer func(t0 time.Time) { i.time("abort_incoming", t0, err) }(time.Now())
	return i.d.AbortIncoming(ctx, name)
}
func (i *instrumented) Migrate(ctx context.Context, name, target, address string) (err error) {
	defer func(t0 time.Time) { i.time("migrate", t0, err) }(time.Now())
	return i.d.Migrate(ctx, name, target, address)
}
func (i *instrumented) Stats(ctx context.Context) (s Stats, err error) {
	defer func(t0 time.Time) { i.time("stats", t0, err) }(time.Now())
	return i.d.Stats(ctx)
}

type instrumentedConsoler struct {
	*instrumented
	c Consoler
}

func (i *instrumentedConsoler) ConsoleLog(ctx context.Context, name string, max int) (b []byte, err error) {
	defer func(t0 time.Time) { i.time("console_log", t0, err) }(time.Now())
	return i.c.ConsoleLog(ctx, name, max)
}
func (i *instrumentedConsoler) Console(ctx context.Context, name string) (rw io.ReadWriteCloser, err error) {
	defer func(t0 time.Time) { i.time("console", t0, err) }(time.Now())
	return i.c.Console(ctx, name)
}
