package site

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/usher-vm/usher/api"
	"github.com/usher-vm/usher/controller"

	"github.com/google/renameio/v2"

	"github.com/usher-vm/usher/core"
)

// The state's size hint (core.SizeHint) lives in STATE_DIR/state-size.json.
// It is rewritten when the number of VMs has changed by a tenth since the
// last write (checked every sizeHintEvery), so a restart sizes its indices
// for what the LNMs are about to report. It is not state: a missing or
// unreadable file only costs the restart some speed.
const sizeHintEvery = 5 * time.Second

// loadSizeHint reads the hint at path; a missing file is no hint, and a
// damaged one is moved aside (it is no state: only speed is lost).
func loadSizeHint(path string, log *slog.Logger) core.SizeHint {
	h, err := readSizeHint(path)
	if err == nil {
		return h
	}
	if aside, merr := controller.MoveAside(path); merr == nil {
		log.Error("state size hint damaged: moved aside; the restart sizes its indices as it goes", "file", path, "moved_to", aside, "err", err)
	} else {
		log.Warn("state size hint ignored", "file", path, "err", err)
	}
	return core.SizeHint{}
}

func readSizeHint(path string) (core.SizeHint, error) {
	var h core.SizeHint
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return h, nil
	}
	if err != nil {
		return h, fmt.Errorf("reading the state size hint: %w", err)
	}
	if err := json.Unmarshal(b, &h); err != nil {
		return core.SizeHint{}, fmt.Errorf("reading the state size hint %s: %w", path, err)
	}
	return h, nil
}

// writeSizeHint replaces the file atomically.
func writeSizeHint(path string, h core.SizeHint) error {
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	if err := renameio.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("saving the state size hint: %w", err)
	}
	return nil
}

// sizer is what keepSizeHint reads of the state (*core.State).
type sizer interface {
	Counts() api.Counts
	SizeHint() core.SizeHint
}

// keepSizeHint rewrites the hint while ctx lives, when the VM count moved
// by a tenth since the last write, and once more (on any change) when ctx
// ends. last is the count the file holds.
func keepSizeHint(ctx context.Context, st sizer, path string, last int, log *slog.Logger) {
	t := time.NewTicker(sizeHintEvery)
	defer t.Stop()
	save := func(force bool) {
		n := st.Counts().VMs
		d := n - last
		if d < 0 {
			d = -d
		}
		if d == 0 || (!force && d*10 < last) {
			return
		}
		if err := writeSizeHint(path, st.SizeHint()); err != nil {
			log.Warn("state size hint not saved", "err", err)
			return
		}
		last = n
	}
	for {
		select {
		case <-ctx.Done():
			save(true)
			return
		case <-t.C:
			save(false)
		}
	}
}
