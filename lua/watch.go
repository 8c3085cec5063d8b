package lua

import (
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/fsnotify/fsnotify"
)

// debounce is how long a file must be quiet before it is reloaded.
const debounce = 100 * time.Millisecond

// startWatch watches the policy directories (not the files: editors save by
// writing a temporary file and renaming it over the old one), and their
// lib/ subdirectories that exist at start (fsnotify is not recursive).
func (h *Host) startWatch() error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return err
	}
	for _, d := range h.opts.Dirs {
		if err := w.Add(d); err != nil {
			w.Close()
			return err
		}
		lib := filepath.Join(d, "lib")
		if fi, err := os.Stat(lib); err == nil && fi.IsDir() {
			if err := w.Add(lib); err != nil {
				w.Close()
				return err
			}
		}
	}
	h.watcher = w
	h.wg.Add(1)
	go h.watchLoop(w)
	return nil
}

func (h *Host) watchLoop(w *fsnotify.Watcher) {
	defer h.wg.Done()
	var mu sync.Mutex
	timers := map[string]*time.Timer{}
	defer func() {
		mu.Lock()
		for _, t := range timers {
			if t.Stop() {
				h.wg.Done()
			}
		}
		mu.Unlock()
	}()
	for {
		select {
		case <-h.ctx.Done():
			return
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			h.log.Warn("policy watcher", "err", err)
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			name := filepath.Base(ev.Name)
			if !isScriptName(name) || strings.HasSuffix(name, "~") {
				continue
			}
			path := ev.Name
			reload := h.reloadChanged
			if lib := h.libEvent(path); lib != "" {
				reload = func(string) { h.reloadLib(lib) }
			} else if dirIdx := h.dirIndex(filepath.Dir(ev.Name)); dirIdx < 0 || (dirIdx == 0 && !h.enabled(strings.TrimSuffix(name, ".lua"))) {
				continue
			}
			mu.Lock()
			if t := timers[path]; t != nil && t.Stop() {
				t.Reset(debounce) // not fired yet: push it back
				mu.Unlock()
				continue
			}
			h.wg.Add(1)
			var t *time.Timer
			t = time.AfterFunc(debounce, func() {
				defer h.wg.Done()
				mu.Lock()
				if timers[path] == t {
					delete(timers, path)
				}
				mu.Unlock()
				if h.ctx.Err() != nil {
					return
				}
				reload(path)
			})
			timers[path] = t
			mu.Unlock()
		}
	}
}

// reloadChanged reloads path; a file that no longer exists unloads its
// script. Reload results are announced through the reload hook (tests).
func (h *Host) reloadChanged(path string) {
	err := h.loadPath(path)
	if f := h.onReload.Load(); f != nil {
		(*f)(path, err)
	}
}

// libEvent returns the library name when path is <policydir>/lib/<name>.lua.
func (h *Host) libEvent(path string) string {
	dir := filepath.Dir(path)
	if filepath.Base(dir) != "lib" || h.dirIndex(filepath.Dir(dir)) < 0 {
		return ""
	}
	name := strings.TrimSuffix(filepath.Base(path), ".lua")
	if !libNameRE.MatchString(name) {
		return ""
	}
	return name
}

// reloadLib reloads every script that required library name (or tried to
// and failed). A dependent whose reload fails keeps its old version. Each
// result is announced through the reload hook under the script's path.
func (h *Host) reloadLib(name string) {
	h.mu.Lock()
	var paths []string
	for _, s := range h.scripts {
		for _, n := range s.libs {
			if n == name {
				paths = append(paths, s.path)
				break
			}
		}
	}
	h.mu.Unlock()
	sort.Strings(paths)
	if len(paths) == 0 {
		h.log.Debug("policy library changed; no script requires it", "lib", name)
	}
	for _, p := range paths {
		if h.ctx.Err() != nil {
			return
		}
		h.reloadChanged(p)
	}
}

func (h *Host) dirIndex(dir string) int {
	for i, d := range h.opts.Dirs {
		if filepath.Clean(d) == filepath.Clean(dir) {
			return i
		}
	}
	return -1
}
