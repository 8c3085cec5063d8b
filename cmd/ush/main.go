// Command ush is the Usher shell: an interactive and scriptable client of
// the Usher controller. Everything lives in package repl.
package main

import (
	"os"

	"github.com/usher-vm/usher/repl"
)

func main() { os.Exit(repl.Main(os.Args[1:])) }
