// Package bench is `usher bench`: Usher measured at cluster scale on one
// machine, over loopback. It starts a controller process and load-generator
// processes hosting simulated LNMs (the usher binary's own `controller` and
// `lnm --count` commands), drives them with clients, and reports
// throughput, latency percentiles, the controller's CPU and memory, and
// errors (docs/benchmarks.md records the figures).
//
// It may import the public client API, site and the packages a scenario
// needs in process (lua for the chain scenario).
package bench
