package bench

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Machine describes where a report was measured, read from /proc and /sys.
type Machine struct {
	CPUs      int    `json:"cpus"`
	CPUModel  string `json:"cpu_model,omitempty"`
	MemoryMiB int64  `json:"memory_mib,omitempty"`
	Kernel    string `json:"kernel,omitempty"`
	// Disk is the block device holding the benchmark directory, its file system and queue
	// settings.
	Disk       string `json:"disk,omitempty"`
	FileSystem string `json:"filesystem,omitempty"`
	Rotational string `json:"rotational,omitempty"`
	Scheduler  string `json:"scheduler,omitempty"`
	Virtual    string `json:"hypervisor,omitempty"`
}

func (m Machine) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%d CPUs", m.CPUs)
	if m.CPUModel != "" {
		fmt.Fprintf(&b, " (%s)", m.CPUModel)
	}
	if m.MemoryMiB > 0 {
		fmt.Fprintf(&b, ", %d MiB RAM", m.MemoryMiB)
	}
	if m.Kernel != "" {
		fmt.Fprintf(&b, ", Linux %s", m.Kernel)
	}
	if m.Disk != "" {
		fmt.Fprintf(&b, ", disk %s", m.Disk)
		if m.FileSystem != "" {
			fmt.Fprintf(&b, " (%s", m.FileSystem)
			if m.Scheduler != "" {
				fmt.Fprintf(&b, ", %s", m.Scheduler)
			}
			if m.Rotational != "" {
				fmt.Fprintf(&b, ", rotational=%s", m.Rotational)
			}
			b.WriteString(")")
		}
	}
	if m.Virtual != "" {
		fmt.Fprintf(&b, ", %s guest", m.Virtual)
	}
	return b.String()
}

// DescribeMachine gathers what it can; missing facts are left empty.
func DescribeMachine(dir string) Machine {
	m := Machine{CPUs: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if v, ok := procField("/proc/cpuinfo", "model name"); ok {
		m.CPUModel = v
	}
	if kb, err := ProcKiB("/proc/meminfo", "MemTotal"); err == nil {
		m.MemoryMiB = kb / 1024
	}
	if v, ok := procField("/proc/cpuinfo", "flags"); ok && strings.Contains(" "+v+" ", " hypervisor ") {
		m.Virtual = "virtual machine"
	}
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err == nil {
		maj, mnr := unix.Major(st.Dev), unix.Minor(st.Dev)
		m.FileSystem = mountFS(maj, mnr)
		if link, err := os.Readlink(fmt.Sprintf("/sys/dev/block/%d:%d", maj, mnr)); err == nil {
			name := filepath.Base(link)
			m.Disk = name
			queue := fmt.Sprintf("/sys/class/block/%s/queue", name)
			if _, err := os.Stat(queue); err != nil {
				// A partition: the queue belongs to the parent disk.
				queue = filepath.Join("/sys/dev/block", fmt.Sprintf("%d:%d", maj, mnr), "..", "queue")
			}
			if b, err := os.ReadFile(filepath.Join(queue, "rotational")); err == nil {
				m.Rotational = strings.TrimSpace(string(b))
			}
			if b, err := os.ReadFile(filepath.Join(queue, "scheduler")); err == nil {
				s := strings.TrimSpace(string(b))
				if i := strings.IndexByte(s, '['); i >= 0 {
					if j := strings.IndexByte(s[i:], ']'); j > 0 {
						s = s[i+1 : i+j]
					}
				}
				m.Scheduler = s
			}
			if strings.Contains(link, "virtio") {
				m.Disk += " (virtio)"
			}
		}
	}
	return m
}

// procField returns the value of the first "key : value" line of a /proc file.
func procField(path, key string) (string, bool) {
	v, err := readProcField(path, key)
	return v, err == nil
}

// readProcField returns the value of the "key: value" line of a /proc file such as
// /proc/meminfo or /proc/PID/status.
func readProcField(path, key string) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == key {
			return strings.TrimSpace(v), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read %s: %w", path, err)
	}
	return "", fmt.Errorf("%s has no %s line", path, key)
}

// ProcKiB reads a field given in kB, such as MemTotal in /proc/meminfo or VmRSS in
// /proc/PID/status.
func ProcKiB(path, key string) (int64, error) {
	v, err := readProcField(path, key)
	if err != nil {
		return 0, err
	}
	num, unit, _ := strings.Cut(v, " ")
	kb, err := strconv.ParseInt(num, 10, 64)
	if err != nil || strings.TrimSpace(unit) != "kB" {
		return 0, fmt.Errorf("%s: unexpected %s value %q", path, key, v)
	}
	return kb, nil
}

// mountFS finds the file system type mounted from device maj:min in /proc/self/mountinfo.
func mountFS(maj, mnr uint32) string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	defer f.Close()
	want := fmt.Sprintf("%d:%d", maj, mnr)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 3 || fields[2] != want {
			continue
		}
		for i, fl := range fields {
			if fl == "-" && i+1 < len(fields) {
				return fields[i+1]
			}
		}
	}
	return ""
}
