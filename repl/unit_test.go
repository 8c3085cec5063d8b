package repl

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

func writeFile(p, s string) error { return os.WriteFile(p, []byte(s), 0o600) }

func TestTokenize(t *testing.T) {
	got, err := tokenize(`start -n web -c 2 motd="hello world" x='a b' 'web[1-2]' \"q`)
	want := []string{"start", "-n", "web", "-c", "2", "motd=hello world", "x=a b", "web[1-2]", `"q`}
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("%q %v", got, err)
	}
	if _, err := tokenize(`pause "web1`); err == nil {
		t.Fatal("unterminated quote accepted")
	}
}

func TestParseArgs(t *testing.T) {
	start := lookup("start")
	p, err := parseArgs(start, []string{"image=deb", "-n", "web", "--count=3", "--on", "node[1-2]", "--json"})
	if err != nil || p.opts["cluster"] != "web" || p.opts["count"] != "3" || p.opts["on"] != "node[1-2]" || !p.json ||
		!reflect.DeepEqual(p.pos, []string{"image=deb"}) {
		t.Fatalf("%+v %v", p, err)
	}
	sa, on, err := startArgs(p)
	if err != nil || sa.Count != 3 || sa.Cluster != "web" || sa.Args["image"] != "deb" || on != "node[1-2]" {
		t.Fatalf("%+v %q %v", sa, on, err)
	}
	for _, bad := range [][]string{{"-x"}, {"-n"}, {"--status=1"}} {
		cmd := start
		if bad[0] == "--status=1" {
			cmd = lookup("list")
		}
		if _, err := parseArgs(cmd, bad); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
	p, _ = parseArgs(start, []string{"-n", "web", "-c", "0"})
	if _, _, err := startArgs(p); err == nil || !strings.Contains(err.Error(), "positive") {
		t.Fatalf("count 0: %v", err)
	}
}

func TestCompletionWithoutClient(t *testing.T) {
	s := &session{out: &printer{w: os.Stdout}}
	head, c, _ := s.complete("lis", 3)
	if head != "" || !reflect.DeepEqual(c, []string{"list", "list_lnms"}) {
		t.Fatalf("%q %q", head, c)
	}
	_, c, _ = s.complete("start --o", 9)
	if !reflect.DeepEqual(c, []string{"--on "}) {
		t.Fatalf("%q", c)
	}
	_, c, _ = s.complete("help mig", 8)
	if !reflect.DeepEqual(c, []string{"migrate "}) {
		t.Fatalf("%q", c)
	}
	_, c, _ = s.complete("plan pa", 7)
	if !reflect.DeepEqual(c, []string{"pause "}) {
		t.Fatalf("%q", c)
	}
	_, c, _ = s.complete("policy s", 8)
	if !reflect.DeepEqual(c, []string{"status "}) {
		t.Fatalf("%q", c)
	}
}

func TestFormatRawJSON(t *testing.T) {
	got := formatRawJSON([]byte(`{"scripts":[{"name":"quota","handlers":["start_request"],"errors":[]}],"active":true}`))
	want := "active: true\nscripts:\n  - errors: (none)\n    handlers: start_request\n    name: quota"
	if got != want {
		t.Fatalf("got\n%s\nwant\n%s", got, want)
	}
}

func TestHelpCoversEveryCommand(t *testing.T) {
	for _, c := range commands {
		h := helpCommand(c)
		if !strings.Contains(h, "Example") || len(c.summary) == 0 {
			t.Errorf("help %s lacks an example or summary:\n%s", c.name, h)
		}
	}
}
