package repl

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/usher-vm/usher/client"
	"github.com/usher-vm/usher/core/config"
)

// Params declares the client configuration keys the shell reads. They live
// in the [client] section of the Usher configuration files.
func Params() []config.Param {
	return []config.Param{
		{Key: "client.addr", Kind: config.String, Default: "127.0.0.1:7070", Help: "controller address host:port; several, comma-separated, for highly available controllers (docs/ha.md)"},
		{Key: "client.ca_file", Kind: config.String, Default: "", Help: "site CA certificate (PEM) the controller's certificate is checked against"},
		{Key: "client.server_name", Kind: config.String, Default: "", Help: "name in the controller's certificate (default: host of client.addr)"},
		{Key: "client.user", Kind: config.String, Default: "", Help: "user name (default: $USER)"},
		{Key: "client.password", Kind: config.String, Default: "", Help: "password; asked for without echo when empty"},
		{Key: "client.cluster", Kind: config.String, Default: "", Help: "only cache and act on this virtual cluster's VMs"},
		{Key: "client.history_file", Kind: config.String, Default: DefaultHistoryFile(), Help: "interactive history ($XDG_STATE_HOME/ush/history or ~/.ush_history)"},
		{Key: "client.timeout", Kind: config.Duration, Default: 10 * time.Minute, Help: "deadline of one remote call"},
	}
}

// DefaultHistoryFile is $XDG_STATE_HOME/ush/history when XDG_STATE_HOME is
// set, otherwise ~/.ush_history.
func DefaultHistoryFile() string {
	if x := os.Getenv("XDG_STATE_HOME"); x != "" {
		return filepath.Join(x, "ush", "history")
	}
	if home, err := os.UserHomeDir(); err == nil && home != "" {
		return filepath.Join(home, ".ush_history")
	}
	return ".ush_history"
}

// NewConfig returns a config.Set holding the client parameters.
func NewConfig() *config.Set { return config.New(Params()...) }

// LoadConfig reads the [client] section of each file in paths (in order;
// missing files are skipped except $USHER_CONFIG). A file that is only a
// client configuration is loaded by config.LoadFiles with its full checks;
// a shared site file that also holds [controller], [lnm] … sections has
// its other sections left to the programs they belong to, while unknown
// keys inside [client] are still errors.
func LoadConfig(set *config.Set, paths []string) error {
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && p != os.Getenv("USHER_CONFIG") {
				continue
			}
			// let config produce its usual message
			if lerr := set.LoadFiles(p); lerr != nil {
				return lerr
			}
			return err
		}
		var tree map[string]any
		if _, err := toml.Decode(string(data), &tree); err != nil {
			return fmt.Errorf("config: %s: %v", p, err)
		}
		onlyClient := true
		for k := range tree {
			if k != "client" {
				onlyClient = false
			}
		}
		if onlyClient {
			if err := set.LoadFiles(p); err != nil {
				return err
			}
			continue
		}
		tbl, _ := tree["client"].(map[string]any)
		if tbl == nil {
			continue
		}
		keys := make([]string, 0, len(tbl))
		for k := range tbl {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		dir := filepath.Dir(p)
		if abs, err := filepath.Abs(p); err == nil {
			dir = filepath.Dir(abs)
		}
		for _, k := range keys {
			key := "client." + k
			v := tbl[k]
			text := fmt.Sprint(v)
			if s, ok := v.(string); ok {
				text = s
				if config.IsPathKey(key) && s != "" && !filepath.IsAbs(s) && !strings.HasPrefix(s, "~") {
					text = filepath.Join(dir, s)
				}
			}
			if err := set.Set(key, text, p); err != nil {
				return fmt.Errorf("config: %s: %v", p, err)
			}
		}
	}
	return nil
}

// expandHome turns a leading ~/ into the home directory.
func expandHome(p string) string {
	if p == "~" || strings.HasPrefix(p, "~/") {
		if home, err := os.UserHomeDir(); err == nil {
			return filepath.Join(home, strings.TrimPrefix(p, "~"))
		}
	}
	return p
}

// ClientConfig builds the client configuration from the set.
func ClientConfig(set *config.Set) client.Config {
	user := set.String("client.user")
	if user == "" {
		user = os.Getenv("USER")
	}
	return client.Config{
		Addr:        set.String("client.addr"),
		CAFile:      expandHome(set.String("client.ca_file")),
		ServerName:  set.String("client.server_name"),
		User:        user,
		Password:    set.String("client.password"),
		Cluster:     set.String("client.cluster"),
		CallTimeout: set.Duration("client.timeout"),
	}
}
