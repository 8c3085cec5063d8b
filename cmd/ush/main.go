package main

import (
	"os"

	"github.com/usher-vm/usher/repl"
)

func main() { os.Exit(repl.Main(os.Args[1:])) }
