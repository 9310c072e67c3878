package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of the tick counts in /proc/stat and /proc/<pid>/stat:
// USER_HZ, 100 on every Linux architecture Go supports.
const userHZ = 100

// cpuSample is a reading of the CPU time used so far by the daemon, by this
// process (the injector, and the kernel work its packets cause in its
// context) and by the whole machine.
type cpuSample struct {
	daemon, self, machine time.Duration
}

// sampleCPU reads the CPU clocks of the daemon with pid (none if pid is
// 0), this process and the machine.
func sampleCPU(pid int) (cpuSample, error) {
	var s cpuSample
	var err error
	if pid != 0 {
		if s.daemon, err = procCPU(pid); err != nil {
			return s, err
		}
	}
	if s.self, err = procCPU(os.Getpid()); err != nil {
		return s, err
	}
	idle, total, err := cpuTimes()
	s.machine = time.Duration(total-idle) * time.Second / userHZ
	return s, err
}

// sub returns the CPU time used between o and s.
func (s cpuSample) sub(o cpuSample) cpuSample {
	return cpuSample{daemon: s.daemon - o.daemon, self: s.self - o.self, machine: s.machine - o.machine}
}

// others returns the CPU time that neither the daemon nor this process
// used: other processes, and kernel threads such as ksoftirqd. Near zero
// in a clean run.
func (s cpuSample) others() time.Duration { return max(0, s.machine-s.daemon-s.self) }

// procCPU returns the CPU time (user + system, all threads) process pid
// has used, from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, error) {
	return statCPU(fmt.Sprintf("/proc/%d/stat", pid))
}

// taskCPU returns the CPU time (user + system) thread tid of this process
// has used, from /proc/self/task/<tid>/stat.
func taskCPU(tid int) (time.Duration, error) {
	return statCPU(fmt.Sprintf("/proc/self/task/%d/stat", tid))
}

// statCPU returns utime + stime from the stat file at path.
func statCPU(path string) (time.Duration, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read CPU time: %w", err)
	}
	// Fields after the parenthesised command name, which may hold spaces:
	// state is field 3, utime 14, stime 15.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0, fmt.Errorf("parse %s: %q", path, b)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, fmt.Errorf("parse %s: %q", path, b)
	}
	var ticks uint64
	for _, s := range f[11:13] {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("parse %s: %w", path, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// cpuBusy returns the fraction of all CPUs' time spent not idle over d,
// from /proc/stat.
func cpuBusy(d time.Duration) (float64, error) {
	idle0, total0, err := cpuTimes()
	if err != nil {
		return 0, err
	}
	time.Sleep(d)
	idle1, total1, err := cpuTimes()
	if err != nil {
		return 0, err
	}
	if total1 == total0 {
		return 0, nil
	}
	return 1 - float64(idle1-idle0)/float64(total1-total0), nil
}

// cpuTimes returns the idle (idle + iowait) and total ticks of the "cpu"
// line of /proc/stat.
func cpuTimes() (idle, total uint64, err error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("read /proc/stat: %w", err)
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 6 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("parse /proc/stat: %q", line)
	}
	for i, s := range f[1:] {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("parse /proc/stat: %w", err)
		}
		total += n
		if i == 3 || i == 4 {
			idle += n
		}
	}
	return idle, total, nil
}
