package controller

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/core"
)

// LoadNodeModes reads the node modes kept across restarts (every node
// that is not active). None kept is none; a damaged document is set aside
// with a loud log line and none are restored (admins isolate or drain
// again; nothing else is lost).
func LoadNodeModes(b Blob, log *slog.Logger) (map[string]core.ModeRecord, error) {
	m, err := LoadJSON(b, "node modes", "every node starts active (isolate or drain again)", log, func(m map[string]core.ModeRecord) error {
		for name, r := range m {
			if err := api.ValidLabel(name); err != nil {
				return fmt.Errorf("node name %q: %v", name, err)
			}
			if _, err := api.ParseNodeMode(string(r.Mode)); err != nil {
				return fmt.Errorf("node %s: %v", name, err)
			}
		}
		return nil
	})
	if m == nil {
		m = map[string]core.ModeRecord{}
	}
	return m, err
}

// FenceCommand returns the core's Fence for the site's fencing command:
// argv with {node}, {address} and {hostname} replaced by the lost node's
// name, advertised address and host name. Exit status 0 confirms the node
// is powered off; anything else, or the deadline, is a failed fence (the
// command's process group is killed at the deadline). Its output is
// logged and its last line given as the reason of a failure.
func FenceCommand(argv []string, log *slog.Logger) func(ctx context.Context, n api.NodeInfo) error {
	return func(ctx context.Context, n api.NodeInfo) error {
		if len(argv) == 0 {
			return errors.New("no fencing command")
		}
		r := strings.NewReplacer("{node}", n.Name, "{address}", n.Address, "{hostname}", n.Hostname)
		args := make([]string, len(argv))
		for i, a := range argv {
			args[i] = r.Replace(a)
		}
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
		cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
		cmd.WaitDelay = 5 * time.Second
		var out limitedBuffer
		cmd.Stdout, cmd.Stderr = &out, &out
		start := time.Now()
		err := cmd.Run()
		text := strings.TrimSpace(out.String())
		log.Info("fencing command ran", "lnm", n.Name, "command", args, "took", time.Since(start).Round(time.Millisecond), "err", err, "output", text)
		if ctx.Err() != nil {
			return fmt.Errorf("fencing command %s did not confirm within the deadline: %w", args[0], ctx.Err())
		}
		if err != nil {
			last := text
			if i := strings.LastIndexByte(last, '\n'); i >= 0 {
				last = last[i+1:]
			}
			if last != "" {
				return fmt.Errorf("fencing command %s: %v: %s", args[0], err, last)
			}
			return fmt.Errorf("fencing command %s: %w", args[0], err)
		}
		return nil
	}
}

// limitedBuffer keeps the first 8 KiB written to it.
type limitedBuffer struct{ bytes.Buffer }

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := 8<<10 - b.Len(); room > 0 {
		b.Buffer.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// LoadReservations reads the reservations kept across restarts. None
// kept is none; a damaged document is set aside with a loud log line and
// none are restored.
func LoadReservations(b Blob, log *slog.Logger) ([]api.Reservation, error) {
	return LoadJSON(b, "reservations", "no reservation is held (create them again)", log, func(list []api.Reservation) error {
		for _, r := range list {
			if err := api.ValidReservationID(r.ID); err != nil {
				return err
			}
			if err := api.ValidLabel(r.Owner); err != nil {
				return fmt.Errorf("reservation %s: owner: %v", r.ID, err)
			}
		}
		return nil
	})
}
