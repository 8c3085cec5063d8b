package libvirt

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	lv "github.com/digitalocean/go-libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/usher-vm/usher/nodemgr"
)

var _ nodemgr.Consoler = (*Driver)(nil)

// consoleLogPath is where the domain's serial console is logged: the
// path in its live XML (after a migration, the source's path, which the
// destination QEMU keeps appending to), else in the XML this driver
// kept, else ConsolePath.
func (d *Driver) consoleLogPath(ctx context.Context, name string) string {
	var x string
	err := d.call(ctx, 0, func(l *lv.Libvirt) error {
		dom, err := d.lookup(l, name)
		if err != nil {
			return err
		}
		x, err = l.DomainGetXMLDesc(dom, 0)
		return err
	})
	if err != nil {
		b, rerr := os.ReadFile(d.path(name, extXML))
		if rerr != nil {
			return d.ConsolePath(name)
		}
		x = string(b)
	}
	var def libvirtxml.Domain
	if def.Unmarshal(x) == nil && def.Devices != nil {
		for _, s := range def.Devices.Serials {
			if s.Log != nil && s.Log.File != "" {
				return s.Log.File
			}
			if s.Source != nil && s.Source.File != nil && s.Source.File.Path != "" {
				return s.Source.File.Path
			}
		}
	}
	return d.ConsolePath(name)
}

// ConsoleLog returns up to max bytes from the end of the domain's console
// log.
func (d *Driver) ConsoleLog(ctx context.Context, name string, max int) ([]byte, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	p := d.consoleLogPath(ctx, name)
	f, err := os.Open(p)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("libvirt: %s has no console log (%s)", name, p)
	}
	if err != nil {
		return nil, fmt.Errorf("libvirt: console log of %s: %w", name, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	off := int64(0)
	if max > 0 && st.Size() > int64(max) {
		off = st.Size() - int64(max)
	}
	b := make([]byte, st.Size()-off)
	n, err := f.ReadAt(b, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("libvirt: console log of %s: %w", name, err)
	}
	return b[:n], nil
}

// Console attaches to the domain's serial console through libvirt
// (virDomainOpenConsole, forced: an earlier session on it is taken over).
// The stream lives as long as the console: it ends when the caller closes
// it, the domain stops or migrates away, or the connection to libvirtd
// drops.
func (d *Driver) Console(ctx context.Context, name string) (io.ReadWriteCloser, error) {
	if err := validName(name); err != nil {
		return nil, err
	}
	l, err := d.conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("libvirt: console of %s: %w", name, err)
	}
	var dom lv.Domain
	err = d.callOn(ctx, l, 0, func(l *lv.Libvirt) error {
		var err error
		dom, err = d.lookup(l, name)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("libvirt: console of %s: %w", name, err)
	}
	fromGuest, guestOut := io.Pipe() // libvirt writes what the guest prints
	keys, toGuest := io.Pipe()       // libvirt reads keystrokes
	c := &console{r: fromGuest, w: toGuest, keys: keys, done: make(chan struct{}),
		wait: d.o.CallTimeout, drop: func() { d.drop(l) }}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer close(c.done)
		err := l.DomainOpenConsoleBidirectional(dom, lv.OptString{}, keys, guestOut, uint32(lv.DomainConsoleForce))
		if err == nil {
			err = io.EOF
		}
		guestOut.CloseWithError(err)
		keys.CloseWithError(err)
	}()
	return c, nil
}

// console is an open libvirt console stream.
type console struct {
	r    *io.PipeReader
	w    *io.PipeWriter
	keys *io.PipeReader
	done chan struct{}
	once sync.Once
	wait time.Duration // how long libvirt may take to end the stream
	drop func()        // gives up on a connection that did not
}

func (c *console) Read(b []byte) (int, error)  { return c.r.Read(b) }
func (c *console) Write(b []byte) (int, error) { return c.w.Write(b) }

// Close ends the stream: libvirt sees the end of the keystrokes and
// closes its side; a guest still printing finds no reader.
func (c *console) Close() error {
	c.once.Do(func() {
		c.w.Close()
		c.r.Close()
	})
	t := time.NewTimer(c.wait)
	defer t.Stop()
	select {
	case <-c.done:
	case <-t.C:
		c.drop() // a fresh connection is built; this stream dies with the old one
		<-c.done
	}
	return nil
}
