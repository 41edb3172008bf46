package perf

import (
	"fmt"

	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// The programs are written with cilium/ebpf's asm package, so building needs no clang. R6–R9
// survive helper calls; R1–R5 are scratch; R10 is the frame pointer (stack below it).

// observe adds the value in vReg (nanoseconds) to probe p's histogram and its sum, and bReg (if
// not R0) to its bytes. It clobbers R1–R5 and calls no helper.
func observe(l string, hists int, p Probe, vReg, bReg asm.Register) asm.Instructions {
	in := asm.Instructions{
		asm.Mov.Reg(asm.R1, vReg),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.R1),
	}
	// R2 = floor(log2(v)), without loops: six halving steps.
	for _, s := range []int32{32, 16, 8, 4, 2, 1} {
		skip := fmt.Sprintf("%s_l%d", l, s)
		in = append(in,
			asm.Mov.Reg(asm.R4, asm.R3),
			asm.RSh.Imm(asm.R4, s),
			asm.JEq.Imm(asm.R4, 0, skip),
			asm.Mov.Reg(asm.R3, asm.R4),
			asm.Add.Imm(asm.R2, s),
			asm.Mov.Imm(asm.R5, 0).WithSymbol(skip), // no-op carrying the label
		)
	}
	in = append(in,
		asm.JLT.Imm(asm.R1, 1<<(SubBits+1), l+"_small"),
		asm.Sub.Imm(asm.R2, SubBits), // shift
		asm.Mov.Reg(asm.R3, asm.R1),
		asm.RSh.Reg(asm.R3, asm.R2), // top SubBits+1 bits
		asm.LSh.Imm(asm.R2, SubBits),
		asm.Add.Reg(asm.R2, asm.R3),
		asm.Ja.Label(l+"_have"),
		asm.Mov.Reg(asm.R2, asm.R1).WithSymbol(l+"_small"),
		asm.JLE.Imm(asm.R2, Buckets-1, l+"_add").WithSymbol(l+"_have"),
		asm.Mov.Imm(asm.R2, Buckets-1),
		asm.LSh.Imm(asm.R2, 3).WithSymbol(l+"_add"),
		asm.LoadMapValue(asm.R5, hists, histOff(p, 0)),
		asm.Add.Reg(asm.R5, asm.R2),
		asm.Mov.Imm(asm.R4, 1),
		asm.AddAtomic.Mem(asm.R5, asm.R4, asm.DWord, 0),
		asm.LoadMapValue(asm.R5, hists, histOff(p, slotSum)),
		asm.AddAtomic.Mem(asm.R5, asm.R1, asm.DWord, 0),
	)
	if bReg != asm.R0 {
		in = append(in,
			asm.LoadMapValue(asm.R5, hists, histOff(p, slotByte)),
			asm.AddAtomic.Mem(asm.R5, bReg, asm.DWord, 0),
		)
	}
	return in
}

// bump adds one to the u64 at byte offset off of the histogram array. Clobbers R4, R5.
func bump(hists int, off uint32) asm.Instructions {
	return asm.Instructions{
		asm.LoadMapValue(asm.R5, hists, off),
		asm.Mov.Imm(asm.R4, 1),
		asm.AddAtomic.Mem(asm.R5, asm.R4, asm.DWord, 0),
	}
}

var exit = asm.Instructions{
	asm.Mov.Imm(asm.R0, 0).WithSymbol("exit"),
	asm.Return(),
}

// fp points R to the stack slot at off below the frame pointer.
func fp(r asm.Register, off int16) asm.Instructions {
	return asm.Instructions{asm.Mov.Reg(r, asm.RFP), asm.Add.Imm(r, int32(off))}
}

// call calls a map helper on map m with the key at stack offset key and, if val is not 0, the
// value at stack offset val (update with BPF_ANY).
func call(fn asm.BuiltinFunc, m int, key, val int16) asm.Instructions {
	in := asm.Instructions{asm.LoadMapPtr(asm.R1, m)}
	in = append(in, fp(asm.R2, key)...)
	if val != 0 {
		in = append(in, fp(asm.R3, val)...)
		in = append(in, asm.Mov.Imm(asm.R4, 0))
	}
	return append(in, fn.Call())
}

// Per-thread starts (system calls, run-queue waits) live in an array indexed by the low
// slotBits of the thread id, not in a hash map: the kernel inlines an array lookup, where a
// hash update and delete cost a few hundred nanoseconds on every system call. A slot holds
// {u32 tid, u32 word, u64 start}; two threads whose ids share the low bits and are in flight at
// once lose a sample (the later one overwrites; the tid check drops the other's end).
const slotBits = 16

// slot leaves in R0 the address of the slot of the thread id in tidReg, in array map m.
// Clobbers R1–R5.
func slot(m int, tidReg asm.Register) asm.Instructions {
	in := asm.Instructions{
		asm.Mov.Reg(asm.R2, tidReg),
		asm.And.Imm(asm.R2, 1<<slotBits-1),
		asm.StoreMem(asm.RFP, -24, asm.R2, asm.Word),
	}
	in = append(in, call(asm.FnMapLookupElem, m, -24, 0)...)
	return append(in, asm.JEq.Imm(asm.R0, 0, "exit"))
}

// begin records in the slot at R0 the thread id in tidReg, the word in wReg and the time now.
// Clobbers R0–R5 and R9.
func begin(tidReg, wReg asm.Register) asm.Instructions {
	return asm.Instructions{
		asm.StoreMem(asm.R0, 0, tidReg, asm.Word),
		asm.StoreMem(asm.R0, 4, wReg, asm.Word),
		asm.Mov.Reg(asm.R9, asm.R0),
		asm.FnKtimeGetNs.Call(),
		asm.StoreMem(asm.R9, 8, asm.R0, asm.DWord),
	}
}

// end takes the start (at offset 8) the slot at R0 holds for the id in idReg (at offset 0, of
// idSize), or exits: it leaves the time since in R9 and the slot's word (at wordOff, of
// wordSize) in R8, and clears the start. Clobbers R0–R5 and R7.
func end(idReg asm.Register, idSize asm.Size, wordOff int16, wordSize asm.Size) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R2, asm.R0, 0, idSize),
		asm.JNE.Reg(asm.R2, idReg, "exit"),
		asm.LoadMem(asm.R7, asm.R0, 8, asm.DWord),
		asm.JEq.Imm(asm.R7, 0, "exit"),
		asm.LoadMem(asm.R8, asm.R0, wordOff, wordSize),
		asm.Mov.Imm(asm.R2, 0),
		asm.StoreMem(asm.R0, 8, asm.R2, asm.DWord),
		asm.FnKtimeGetNs.Call(),
		asm.Sub.Reg(asm.R0, asm.R7),
		asm.Mov.Reg(asm.R9, asm.R0),
	}
}

// dispatch counts R9 into probe p's histogram when pReg holds p, or an error when errReg
// says so (errNonNeg: the error is errReg < 0; else errReg != 0); bytes from bReg unless R0.
func dispatch(hists int, pReg asm.Register, probes []Probe, errReg asm.Register, errNeg bool, bytes func(Probe) asm.Register) asm.Instructions {
	var in asm.Instructions
	for _, p := range probes {
		l := fmt.Sprintf("p%d", p)
		in = append(in, asm.JNE.Imm(pReg, int32(p), l+"_next"))
		if errNeg {
			in = append(in, asm.JSGE.Imm(errReg, 0, l+"_ok"))
		} else {
			in = append(in, asm.JEq.Imm(errReg, 0, l+"_ok"))
		}
		in = append(in, bump(hists, histOff(p, slotErr))...)
		in = append(in, asm.Ja.Label("exit"))
		ob := observe(l, hists, p, asm.R9, bytes(p))
		ob[0] = ob[0].WithSymbol(l + "_ok")
		in = append(in, ob...)
		in = append(in,
			asm.Ja.Label("exit"),
			asm.Mov.Imm(asm.R5, 0).WithSymbol(l+"_next"),
		)
	}
	return in
}

// syscall classes: which probe a system call counts in, and whether its result is bytes.
type sysClass struct {
	probe Probe
	bytes bool
	nrs   []int
}

var sysClasses = []sysClass{
	{SysPwrite, true, []int{unix.SYS_PWRITE64, unix.SYS_PWRITEV, unix.SYS_PWRITEV2}},
	{SysPread, true, []int{unix.SYS_PREAD64, unix.SYS_PREADV, unix.SYS_PREADV2}},
	{SysFsync, false, []int{unix.SYS_FSYNC, unix.SYS_FDATASYNC}},
	{SysURing, false, []int{unix.SYS_IO_URING_ENTER}},
	{SysSend, true, []int{unix.SYS_WRITE, unix.SYS_WRITEV, unix.SYS_SENDMSG, unix.SYS_SENDTO}},
	{SysRecv, true, []int{unix.SYS_READ, unix.SYS_READV, unix.SYS_RECVMSG, unix.SYS_RECVFROM}},
}

// ifDaemon keeps the context in R6, stores pid_tgid at stack offset -8 and exits unless the
// current task belongs to the daemon.
func ifDaemon(tgid uint32) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.FnGetCurrentPidTgid.Call(),
		asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord),
		asm.RSh.Imm(asm.R0, 32),
		asm.JNE.Imm(asm.R0, int32(tgid), "exit"),
	}
}

// sysEnter (raw tracepoint sys_enter: args[0] regs, args[1] syscall number) records the start
// and probe of the daemon's tracked system calls in the thread's slot.
func sysEnter(tgid uint32, slots int) asm.Instructions {
	in := append(ifDaemon(tgid), asm.LoadMem(asm.R2, asm.R6, 8, asm.DWord))
	for _, c := range sysClasses {
		for _, nr := range c.nrs {
			next := fmt.Sprintf("nr%d", nr)
			in = append(in,
				asm.JNE.Imm(asm.R2, int32(nr), next),
				asm.Mov.Imm(asm.R8, int32(c.probe)),
				asm.Ja.Label("store"),
				asm.Mov.Imm(asm.R5, 0).WithSymbol(next),
			)
		}
	}
	in = append(in,
		asm.Ja.Label("exit"),
		asm.LoadMem(asm.R7, asm.RFP, -8, asm.Word).WithSymbol("store"), // thread id
	)
	in = append(in, slot(slots, asm.R7)...)
	in = append(in, begin(asm.R7, asm.R8)...)
	return append(in, exit...)
}

// sysExit (raw tracepoint sys_exit: args[1] the return value) takes the start recorded by
// sysEnter and counts the latency and bytes, or the error.
func sysExit(tgid uint32, slots, hists int) asm.Instructions {
	in := append(ifDaemon(tgid),
		asm.LoadMem(asm.R6, asm.R6, 8, asm.DWord),  // R6 = ret
		asm.LoadMem(asm.R7, asm.RFP, -8, asm.Word), // thread id
	)
	in = append(in, slot(slots, asm.R7)...)
	in = append(in, end(asm.R7, asm.Word, 4, asm.Word)...)
	var probes []Probe
	moves := map[Probe]bool{}
	for _, c := range sysClasses {
		probes = append(probes, c.probe)
		moves[c.probe] = c.bytes
	}
	in = append(in, dispatch(hists, asm.R8, probes, asm.R6, true, func(p Probe) asm.Register {
		if moves[p] {
			return asm.R6
		}
		return asm.R0
	})...)
	return append(in, exit...)
}

// blockFields are offsets from the kernel's BTF: struct request's q, cmd_flags and
// __data_len, struct request_queue's disk, struct gendisk's major and first_minor.
type blockFields struct {
	rqQ, rqFlags, rqLen int16
	qDisk               int16
	major, firstMinor   int16
}

// blockOps maps a request's operation (cmd_flags & REQ_OP_MASK) to its probe: REQ_OP_READ 0,
// REQ_OP_WRITE 1, REQ_OP_DISCARD 3; anything else (REQ_OP_FLUSH 2 among them) is a flush.
var blockOps = []struct {
	op    int32
	probe Probe
}{{0, BlockRead}, {1, BlockWrite}, {3, BlockDiscard}}

// Requests in flight live in an array indexed by bits of the request's address (requests of a
// queue are carved from contiguous memory, a cache line or more apart), not in a hash map: a
// hash map update from a program that interrupted another one holding the same bucket lock on
// the CPU fails (a dispatch from a completion interrupt), and that request would be lost. A
// slot holds {u64 request, u64 start, u64 probe | bytes<<32}; two requests in flight at once
// in one slot lose a sample.
const (
	rqSlotBits  = 16
	rqSlotShift = 6
)

// rqSlot leaves in R0 the slot of the request whose address (a scalar) is in R6. Clobbers
// R1–R5.
func rqSlot(m int) asm.Instructions {
	in := asm.Instructions{
		// Fold the address's higher bits in: requests are carved from chunks of 64 KiB or
		// more that may lie any multiple of the array's span apart.
		asm.Mov.Reg(asm.R2, asm.R6),
		asm.RSh.Imm(asm.R2, rqSlotShift),
		asm.Mov.Reg(asm.R3, asm.R2),
		asm.RSh.Imm(asm.R3, rqSlotBits),
		asm.Xor.Reg(asm.R2, asm.R3),
		asm.RSh.Imm(asm.R3, rqSlotBits),
		asm.Xor.Reg(asm.R2, asm.R3),
		asm.And.Imm(asm.R2, 1<<rqSlotBits-1),
		asm.StoreMem(asm.RFP, -24, asm.R2, asm.Word),
	}
	in = append(in, call(asm.FnMapLookupElem, m, -24, 0)...)
	return append(in, asm.JEq.Imm(asm.R0, 0, "exit"))
}

// readKernel copies size bytes at off from the kernel address in src to stack offset dst and
// loads them into dst register r (zero when the read fails). Clobbers R0–R5.
func readKernel(r asm.Register, dst int16, size asm.Size, src asm.Register, off int16) asm.Instructions {
	in := asm.Instructions{
		asm.Mov.Imm(asm.R2, 0),
		asm.StoreMem(asm.RFP, dst, asm.R2, asm.DWord),
	}
	in = append(in, fp(asm.R1, dst)...)
	in = append(in,
		asm.Mov.Imm(asm.R2, int32(size.Sizeof())),
		asm.Mov.Reg(asm.R3, src),
		asm.Add.Imm(asm.R3, int32(off)),
		asm.FnProbeReadKernel.Call(),
		asm.LoadMem(r, asm.RFP, dst, size),
	)
	return in
}

// blockIssue (raw tracepoint block_rq_issue(struct request *rq)) records the start, probe and
// bytes of requests on the devices in the devs map. Raw tracepoints, unlike classic ones, are
// not skipped when they fire while another program runs on the CPU (a completion interrupt
// during an issue); their arguments are plain numbers, so the request is read with
// bpf_probe_read_kernel at offsets from the kernel's BTF.
func blockIssue(f blockFields, devs, slots, hists int) asm.Instructions {
	in := asm.Instructions{asm.LoadMem(asm.R6, asm.R1, 0, asm.DWord)} // rq
	in = append(in, readKernel(asm.R7, -48, asm.DWord, asm.R6, f.rqQ)...)
	in = append(in, readKernel(asm.R7, -48, asm.DWord, asm.R7, f.qDisk)...)
	in = append(in, asm.JEq.Imm(asm.R7, 0, "exit"))
	in = append(in, readKernel(asm.R8, -48, asm.Word, asm.R7, f.major)...)
	in = append(in, readKernel(asm.R9, -48, asm.Word, asm.R7, f.firstMinor)...)
	in = append(in,
		asm.LSh.Imm(asm.R8, 20),
		asm.Or.Reg(asm.R8, asm.R9),
		asm.StoreMem(asm.RFP, -12, asm.R8, asm.Word),
	)
	in = append(in, call(asm.FnMapLookupElem, devs, -12, 0)...)
	in = append(in, asm.JEq.Imm(asm.R0, 0, "exit"))
	in = append(in, readKernel(asm.R3, -48, asm.Word, asm.R6, f.rqFlags)...)
	in = append(in,
		asm.And.Imm(asm.R3, 0xff), // REQ_OP_MASK
		asm.Mov.Imm(asm.R8, int32(BlockFlush)),
	)
	for _, o := range blockOps {
		in = append(in,
			asm.JNE.Imm(asm.R3, o.op, fmt.Sprintf("op%d", o.op)),
			asm.Mov.Imm(asm.R8, int32(o.probe)),
			asm.Mov.Imm(asm.R5, 0).WithSymbol(fmt.Sprintf("op%d", o.op)),
		)
	}
	in = append(in, readKernel(asm.R3, -48, asm.Word, asm.R6, f.rqLen)...)
	in = append(in,
		asm.LSh.Imm(asm.R3, 32),
		asm.Or.Reg(asm.R8, asm.R3),
	)
	in = append(in, rqSlot(slots)...)
	// A slot still holding another request's start: that request will not be counted.
	in = append(in,
		asm.LoadMem(asm.R2, asm.R0, 8, asm.DWord),
		asm.JEq.Imm(asm.R2, 0, "free"),
		asm.LoadMem(asm.R2, asm.R0, 0, asm.DWord),
		asm.JEq.Reg(asm.R2, asm.R6, "free"),
		asm.Mov.Reg(asm.R9, asm.R0),
	)
	in = append(in, bump(hists, counterOff(BlockLost))...)
	in = append(in,
		asm.Mov.Reg(asm.R0, asm.R9),
		asm.StoreMem(asm.R0, 0, asm.R6, asm.DWord).WithSymbol("free"),
		asm.StoreMem(asm.R0, 16, asm.R8, asm.DWord),
		asm.Mov.Reg(asm.R9, asm.R0),
		asm.FnKtimeGetNs.Call(),
		asm.StoreMem(asm.R9, 8, asm.R0, asm.DWord),
	)
	return append(in, exit...)
}

// blockComplete (raw tracepoint block_rq_complete(struct request *rq, blk_status_t error,
// unsigned int nr_bytes): its arguments are plain numbers) counts the request recorded by
// blockIssue.
func blockComplete(slots, hists int) asm.Instructions {
	in := asm.Instructions{
		asm.LoadMem(asm.R6, asm.R1, 0, asm.DWord), // rq
		asm.LoadMem(asm.R7, asm.R1, 8, asm.DWord), // error
		asm.And.Imm(asm.R7, 0xff),
		asm.StoreMem(asm.RFP, -32, asm.R7, asm.DWord),
	}
	in = append(in, rqSlot(slots)...)
	in = append(in, end(asm.R6, asm.DWord, 16, asm.DWord)...)
	in = append(in,
		asm.Mov.Reg(asm.R7, asm.R8),
		asm.And.Imm(asm.R7, 0xff),                    // probe
		asm.RSh.Imm(asm.R8, 32),                      // bytes
		asm.LoadMem(asm.R6, asm.RFP, -32, asm.DWord), // error
	)
	in = append(in, dispatch(hists, asm.R7, []Probe{BlockWrite, BlockRead, BlockFlush, BlockDiscard}, asm.R6, false,
		func(Probe) asm.Register { return asm.R8 })...)
	return append(in, exit...)
}

// taskFields are offsets in struct task_struct, from the kernel's BTF.
type taskFields struct{ pid, tgid int16 }

// ifDaemonThread jumps to skip unless the task_struct in R7 belongs to the daemon, and leaves
// its thread id in R8.
func ifDaemonThread(tgid uint32, t taskFields, skip string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R2, asm.R7, t.tgid, asm.Word),
		asm.JNE.Imm(asm.R2, int32(tgid), skip),
		asm.LoadMem(asm.R8, asm.R7, t.pid, asm.Word),
	}
}

// wakeup (BTF tracepoints sched_wakeup and sched_wakeup_new, args[0] the task) starts the
// wait of a daemon thread made runnable.
func wakeup(tgid uint32, t taskFields, runq int) asm.Instructions {
	in := asm.Instructions{asm.LoadMem(asm.R7, asm.R1, 0, asm.DWord)}
	in = append(in, ifDaemonThread(tgid, t, "exit")...)
	in = append(in, slot(runq, asm.R8)...)
	in = append(in, begin(asm.R8, asm.R8)...)
	return append(in, exit...)
}

// switchIn (BTF tracepoint sched_switch(preempt, prev, next, prev_state)): a daemon thread
// preempted while runnable starts waiting again; a daemon thread switched in stops waiting.
func switchIn(tgid uint32, t taskFields, runq, hists int) asm.Instructions {
	in := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, 24, asm.DWord), // prev_state
		asm.JNE.Imm(asm.R2, 0, "next"),
		asm.LoadMem(asm.R7, asm.R6, 8, asm.DWord), // prev
	}
	in = append(in, ifDaemonThread(tgid, t, "next")...)
	in = append(in, slot(runq, asm.R8)...)
	in = append(in, begin(asm.R8, asm.R8)...)
	in = append(in, asm.LoadMem(asm.R7, asm.R6, 16, asm.DWord).WithSymbol("next"))
	in = append(in, ifDaemonThread(tgid, t, "exit")...)
	in = append(in, asm.Mov.Reg(asm.R6, asm.R8))
	in = append(in, slot(runq, asm.R6)...)
	in = append(in, end(asm.R6, asm.Word, 4, asm.Word)...)
	in = append(in, observe("rq", hists, RunQueue, asm.R9, asm.R0)...)
	return append(in, exit...)
}

// tcpFields are offsets in the tcp tracepoints' records (ports in host order).
type tcpFields struct {
	rsport, rdport int16 // tcp_retransmit_skb
	psport, pdport int16 // tcp_probe
	srtt           int16 // tcp_probe, microseconds
}

// portMatch jumps to "match" when the u16 at sport or dport of R6's record is in ports, and
// exits otherwise.
func portMatch(ports int, sport, dport int16) asm.Instructions {
	in := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}
	for _, off := range []int16{sport, dport} {
		in = append(in,
			asm.LoadMem(asm.R2, asm.R6, off, asm.Half),
			asm.StoreMem(asm.RFP, -4, asm.R2, asm.Half),
		)
		in = append(in, call(asm.FnMapLookupElem, ports, -4, 0)...)
		in = append(in, asm.JNE.Imm(asm.R0, 0, "match"))
	}
	return append(in, asm.Ja.Label("exit"))
}

func tcpRetransmit(f tcpFields, ports, hists int) asm.Instructions {
	in := portMatch(ports, f.rsport, f.rdport)
	b := bump(hists, counterOff(TCPRetransmits))
	b[0] = b[0].WithSymbol("match")
	in = append(in, b...)
	return append(in, exit...)
}

func tcpProbe(f tcpFields, ports, hists int) asm.Instructions {
	in := portMatch(ports, f.psport, f.pdport)
	in = append(in,
		asm.LoadMem(asm.R9, asm.R6, f.srtt, asm.Word).WithSymbol("match"),
		asm.Mul.Imm(asm.R9, 1000),
	)
	in = append(in, observe("rtt", hists, TCPRTT, asm.R9, asm.R0)...)
	return append(in, exit...)
}
