package client_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/usher-vm/usher/api"

	"github.com/usher-vm/usher/client"
)

// A site's own tool: start three VMs in cluster "web", pause two of them by
// range, and print every state change pushed by the controller.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.Connect(ctx, client.Config{
		Addr:     "usher.example.org:7070",
		CAFile:   "/etc/usher/pki/ca.crt",
		User:     "alice",
		Password: "secret",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	c.OnEvent(func(ev api.Event) {
		if ev.Type == api.EvStateChanged {
			fmt.Println(ev.VM.Name, "is now", ev.VM.State)
		}
	})
	res, err := c.Start(ctx, api.StartArgs{Cluster: "web", Count: 3, Args: map[string]string{"image": "debian"}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("started %d of %d\n", res.OK(), res.Requested)
	if _, err := c.Pause(ctx, "web[1-2]"); err != nil {
		log.Fatal(err)
	}
	for _, vm := range c.VMs() { // answered from the cache
		fmt.Println(vm.Name, vm.State, vm.LNM)
	}
}
