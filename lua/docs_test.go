package lua

import (
	"fmt"
	"os"
	"regexp"
	"testing"
)

// TestDocExamplesCompile: every ```lua block of docs/lua-api.md parses.
func TestDocExamplesCompile(t *testing.T) {
	b, err := os.ReadFile("../docs/lua-api.md")
	if err != nil {
		t.Skip(err)
	}
	blocks := regexp.MustCompile("(?s)```lua\n(.*?)```").FindAllSubmatch(b, -1)
	if len(blocks) < 20 {
		t.Fatalf("only %d lua examples", len(blocks))
	}
	for i, m := range blocks {
		if _, err := compile(m[1], fmt.Sprintf("example%d.lua", i+1)); err != nil {
			t.Errorf("%v\n%s", err, m[1])
		}
	}
}
