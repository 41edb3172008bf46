// Package faultnet builds the network of a two-node fault test: two Linux network namespaces
// joined by a veth pair, with the faults a replication link meets in the field injected on
// demand. The host kernel has no netem (see docs/host-facts.md §5), so the faults are made
// from what it does have:
//
//   - a link cut by taking the veth down (loud: connects fail with "network is unreachable"),
//   - a silent cut by an nftables rule dropping everything on the veth (like a pulled cable:
//     nothing fails until a timeout fires),
//   - random loss by an nftables `numgen random` rule on each side's input (as a lossy wire, unseen by the sender),
//   - delay by a user-space TCP proxy ([Proxy]) whose sockets live in a namespace.
//
// [New] picks a free subnet 10.99.N.0/24 (N from 1 to 254) and names everything it creates
// hastfn<N>a / hastfn<N>b, holding an flock on /run/hast-faultnet/<N>.lock while the network
// exists. The lock makes N unique across processes (test binaries of different packages run in
// parallel) and tells a later [New] which leftovers belong to a process that died without
// cleaning up: those are removed before a subnet is reused.
//
// Everything needs root and the `ip` (iproute2) and `nft` (nftables) commands; [New] fails
// with a clear error when they are missing rather than pretending the network works.
//
// Processes are put in a namespace with `ip netns exec` ([Wrap], [Net.WrapNodes]); sockets of
// this process are created in a namespace by [InNetns], which runs a function on an OS thread
// that joined the namespace — a socket keeps the namespace it was created in, so it can be used
// from any goroutine afterwards.
package faultnet
