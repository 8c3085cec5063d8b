package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/google/renameio/v2"
	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/core"
)

// LoadNodeModes reads the node modes kept across restarts (node-modes.json:
// every node that is not active). A missing file is none; a damaged one is
// moved aside with a loud log line and none are restored (admins isolate
// or drain again; nothing else is lost).
func LoadNodeModes(path string, log *slog.Logger) (map[string]core.ModeRecord, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[string]core.ModeRecord{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading node modes: %w", err)
	}
	m := map[string]core.ModeRecord{}
	err = json.Unmarshal(b, &m)
	for name, r := range m {
		if err != nil {
			break
		}
		if verr := api.ValidLabel(name); verr != nil {
			err = fmt.Errorf("node name %q: %v", name, verr)
		} else if _, perr := api.ParseNodeMode(string(r.Mode)); perr != nil {
			err = fmt.Errorf("node %s: %v", name, perr)
		}
	}
	if err != nil {
		aside, merr := MoveAside(path)
		if merr != nil {
			return nil, fmt.Errorf("node modes %s is damaged (%v) and could not be moved aside: %w", path, err, merr)
		}
		log.Error("node modes file damaged: moved aside; every node starts active (isolate or drain again)",
			"file", path, "moved_to", aside, "err", err)
		return map[string]core.ModeRecord{}, nil
	}
	return m, nil
}

// SaveNodeModes returns the core's SaveModes for path: the whole map,
// written atomically (temp file + fsync + rename).
func SaveNodeModes(path string) func(map[string]core.ModeRecord) error {
	return func(m map[string]core.ModeRecord) error {
		b, err := json.MarshalIndent(m, "", "  ")
		if err != nil {
			return err
		}
		if err := renameio.WriteFile(path, b, 0o600); err != nil {
			return fmt.Errorf("saving node modes: %w", err)
		}
		return nil
	}
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

// LoadReservations reads the reservations kept across restarts
// (reservations.json). A missing file is none; a damaged one is moved
// aside with a loud log line and none are restored.
func LoadReservations(path string, log *slog.Logger) ([]api.Reservation, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading reservations: %w", err)
	}
	var list []api.Reservation
	err = json.Unmarshal(b, &list)
	for _, r := range list {
		if err != nil {
			break
		}
		if verr := api.ValidReservationID(r.ID); verr != nil {
			err = verr
		} else if verr := api.ValidLabel(r.Owner); verr != nil {
			err = fmt.Errorf("reservation %s: owner: %v", r.ID, verr)
		}
	}
	if err != nil {
		aside, merr := MoveAside(path)
		if merr != nil {
			return nil, fmt.Errorf("reservations %s is damaged (%v) and could not be moved aside: %w", path, err, merr)
		}
		log.Error("reservations file damaged: moved aside; no reservation is held (create them again)",
			"file", path, "moved_to", aside, "err", err)
		return nil, nil
	}
	return list, nil
}

// SaveReservations returns the core's SaveReservations for path.
func SaveReservations(path string) func([]api.Reservation) error {
	return func(list []api.Reservation) error {
		b, err := json.MarshalIndent(list, "", "  ")
		if err != nil {
			return err
		}
		if err := renameio.WriteFile(path, b, 0o600); err != nil {
			return fmt.Errorf("saving reservations: %w", err)
		}
		return nil
	}
}
