// Command usher runs the parts of an Usher site: the controller, local node
// managers, an embedded demo site, the site CA, configuration and policy
// tooling. Every subcommand has --help.
package main
