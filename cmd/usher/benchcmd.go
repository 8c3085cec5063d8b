package main

import (
	"context"
	"io"

	"github.com/usher-vm/usher/bench"
)

func runBench(ctx context.Context, args []string, out, errOut io.Writer) error {
	return bench.Run(ctx, args, out, errOut)
}
