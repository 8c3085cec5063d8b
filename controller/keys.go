package controller

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"

	"github.com/usher-vm/usher/api"
)

// KeyStore keeps the SSH public keys users register (ush keys add), in
// one JSON file rewritten atomically on every change. A new VM carries
// its owner's keys in its data (ssh_keys, one authorized_keys line per
// line), and the node's driver installs them in the guest (cloud-init
// seed). Keys are parsed with golang.org/x/crypto/ssh and stored
// normalised: type, base64 blob and a comment of safe characters only,
// so a key line can be written into a guest's configuration as is.
type KeyStore struct {
	blob Blob
	mu   sync.Mutex
	m    map[string][]string // user → authorized_keys lines
}

// LoadKeyStore reads the file (missing: no keys). A damaged file is moved
// aside with a loud log line, as the known-LNM file is.
func LoadKeyStore(path string, log *slog.Logger) (*KeyStore, error) {
	return LoadKeyStoreFrom(FileBlob(path), log)
}

// LoadKeyStoreFrom is LoadKeyStore from any Blob.
func LoadKeyStoreFrom(blob Blob, log *slog.Logger) (*KeyStore, error) {
	path := blob.Name()
	k := &KeyStore{blob: blob, m: map[string][]string{}}
	b, err := blob.Read()
	if err == nil && b == nil {
		return k, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading SSH keys: %w", err)
	}
	m := map[string][]string{}
	err = json.Unmarshal(b, &m)
	for u, lines := range m {
		if err != nil {
			break
		}
		if err = api.ValidLabel(u); err != nil {
			break
		}
		for _, l := range lines {
			if _, _, err = parseKey(l); err != nil {
				break
			}
		}
	}
	if err != nil {
		aside, merr := blob.Aside()
		if merr != nil {
			return nil, fmt.Errorf("SSH keys %s are damaged (%v) and could not be moved aside: %w", path, err, merr)
		}
		log.Error("SSH key file damaged: moved aside, starting with no registered keys", "file", path, "moved_to", aside, "err", err)
		return k, nil
	}
	k.m = m
	return k, nil
}

var unsafeComment = regexp.MustCompile(`[^A-Za-z0-9@._+-]+`)

// parseKey parses one authorized_keys line (options are refused: a key
// here is only a key) and returns its normalised line and description.
func parseKey(line string) (string, api.SSHKey, error) {
	line = strings.TrimSpace(line)
	if strings.ContainsAny(line, "\r\n") {
		return "", api.SSHKey{}, errors.New("one key per line")
	}
	pub, comment, opts, rest, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		return "", api.SSHKey{}, fmt.Errorf("not an SSH public key (want an authorized_keys line such as the contents of ~/.ssh/id_ed25519.pub): %w", err)
	}
	if len(opts) > 0 || len(strings.TrimSpace(string(rest))) > 0 {
		return "", api.SSHKey{}, errors.New("one key without authorized_keys options, please")
	}
	comment = strings.Trim(unsafeComment.ReplaceAllString(comment, "_"), "_")
	if len(comment) > 64 {
		comment = comment[:64]
	}
	norm := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))
	if comment != "" {
		norm += " " + comment
	}
	return norm, api.SSHKey{Line: norm, Fingerprint: ssh.FingerprintSHA256(pub), Type: pub.Type(), Comment: comment}, nil
}

func describe(lines []string) []api.SSHKey {
	out := make([]api.SSHKey, 0, len(lines))
	for _, l := range lines {
		if _, k, err := parseKey(l); err == nil {
			out = append(out, k)
		}
	}
	return out
}

// Keys returns a user's keys as the ssh_keys data of a new VM (one line
// per key; "" when none).
func (k *KeyStore) Keys(user string) string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return strings.Join(k.m[user], "\n")
}

// Serve runs a keys call for user.
func (k *KeyStore) Serve(user string, a api.KeysArgs) (api.KeysReply, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	cur := k.m[user]
	switch a.Action {
	case api.KeysAdd:
		norm, key, err := parseKey(a.Key)
		if err != nil {
			return api.KeysReply{}, api.Errorf(api.ErrBadRequest, "keys add: %v", err)
		}
		size := len(norm)
		for _, l := range cur {
			if _, have, _ := parseKey(l); have.Fingerprint == key.Fingerprint {
				return api.KeysReply{}, api.Errorf(api.ErrBadRequest, "keys add: %s is already registered", key.Fingerprint)
			}
			size += len(l) + 1
		}
		if size > api.MaxKeysBytes {
			return api.KeysReply{}, api.Errorf(api.ErrBadRequest, "keys add: %s's keys would take %d bytes (at most %d, so that they fit a VM's data); remove one first", user, size, api.MaxKeysBytes)
		}
		next := append(append([]string(nil), cur...), norm)
		if err := k.saveLocked(user, next); err != nil {
			return api.KeysReply{}, err
		}
		cur = next
	case api.KeysRemove:
		want := strings.TrimSpace(a.Key)
		if n, _, err := parseKey(want); err == nil {
			want = n
		}
		var next []string
		for _, l := range cur {
			_, d, _ := parseKey(l)
			if l == want || d.Fingerprint == want || (d.Comment != "" && d.Comment == want) || sameKey(l, want) {
				continue
			}
			next = append(next, l)
		}
		if len(next) == len(cur) {
			return api.KeysReply{}, api.Errorf(api.ErrNotFound, "keys remove: %s has no key matching %.60q (give the key, its fingerprint or its comment)", user, a.Key)
		}
		if err := k.saveLocked(user, next); err != nil {
			return api.KeysReply{}, err
		}
		cur = next
	}
	return api.KeysReply{User: user, Keys: describe(cur)}, nil
}

// sameKey compares two lines by type and blob, ignoring comments.
func sameKey(a, b string) bool {
	fa, fb := strings.Fields(a), strings.Fields(b)
	return len(fa) >= 2 && len(fb) >= 2 && fa[0] == fb[0] && fa[1] == fb[1]
}

func (k *KeyStore) saveLocked(user string, lines []string) error {
	next := make(map[string][]string, len(k.m)+1)
	for u, l := range k.m {
		next[u] = l
	}
	if len(lines) == 0 {
		delete(next, user)
	} else {
		next[user] = lines
	}
	b, err := json.MarshalIndent(next, "", "  ")
	if err != nil {
		return err
	}
	if err := k.blob.Write(append(b, '\n')); err != nil {
		return api.Errorf(api.ErrInternal, "saving SSH keys: %v", err)
	}
	k.m = next
	return nil
}
