//go:build libvirt

package libvirttest

import (
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/usher-vm/usher/internal/waitfor"
)

// BootWait bounds a harness guest's boot: generous, for software
// emulation (TCG) on a shared 2-core machine that may be 4× slower than a
// fast one.
const BootWait = 90 * time.Second

var tickRE = regexp.MustCompile(`(?m)^tick (\d+)\r?$`)

// Console reads a harness guest's serial console file: how often the
// guest booted, its last tick (-1 before the first) and the text.
func Console(path string) (boots, tick int, text string) {
	b, _ := os.ReadFile(path)
	text = string(b)
	boots = strings.Count(text, "USHER-GUEST-UP")
	tick = -1
	if m := tickRE.FindAllStringSubmatch(text, -1); len(m) > 0 {
		tick, _ = strconv.Atoi(m[len(m)-1][1])
	}
	return boots, tick, text
}

// WaitConsole waits until the console at path shows at least boots boots
// and a tick above after, and returns that tick.
func WaitConsole(t testing.TB, path string, boots, after int) int {
	t.Helper()
	var tick int
	waitfor.Error(t, BootWait, fmt.Sprintf("%s to show %d boots and a tick above %d", path, boots, after), func() error {
		var b int
		var text string
		if b, tick, text = Console(path); b >= boots && tick > after {
			return nil
		}
		if len(text) > 600 {
			text = text[len(text)-600:]
		}
		return fmt.Errorf("%d boots, tick %d; tail %q", b, tick, text)
	})
	return tick
}

// Domstate asks host n's libvirt (not Usher) for a domain's state: "" when
// the host has no such domain.
func (h *Harness) Domstate(n int, name string) (string, error) {
	out, err := h.Virsh(n, "domstate", name)
	if err != nil {
		if strings.Contains(err.Error(), "ailed to get domain") || strings.Contains(err.Error(), "not found") {
			return "", nil
		}
		return "", err
	}
	return out, nil
}

// WaitDomstate waits until host n's libvirt reports the domain in state
// want ("" for no such domain).
func (h *Harness) WaitDomstate(t testing.TB, n int, name, want string) {
	t.Helper()
	waitfor.Error(t, BootWait, fmt.Sprintf("%s on host%d to be %q in libvirt", name, n, want), func() error {
		got, err := h.Domstate(n, name)
		if err == nil && got != want {
			err = fmt.Errorf("it is %q", got)
		}
		return err
	})
}
