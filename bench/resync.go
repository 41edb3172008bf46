package bench

import (
	"context"
	"fmt"
	"time"

	"hast/replicate"
)

// ResyncResult is the resynchronisation benchmark: a volume whose secondary missed writes
// covering all of it reconnects and copies the dirty extents.
type ResyncResult struct {
	// Bytes were copied in Seconds (from the sync's start to its end, as hastd logs it).
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
	MiBps   float64 `json:"mibps"`
	// IdealMiBps is the ideal pipeline copying the same amount from one file to the other
	// (1 MiB requests, 8 in flight).
	IdealMiBps float64 `json:"ideal_mibps"`
	Ratio      float64 `json:"ratio"`
	// Foreground 4 KiB QD1 writes while the resync runs, and the same workload without it.
	FgP50Us    float64 `json:"fg_p50_us,omitempty"`
	FgP99Us    float64 `json:"fg_p99_us,omitempty"`
	BaseP50Us  float64 `json:"base_p50_us,omitempty"`
	BaseP99Us  float64 `json:"base_p99_us,omitempty"`
	FgP99Ratio float64 `json:"fg_p99_ratio,omitempty"`
	// With a configured sync rate: what was measured.
	SyncRate  int64   `json:"sync_rate,omitempty"`
	RateBytes int64   `json:"rate_bytes,omitempty"`
	RateMiBps float64 `json:"rate_mibps,omitempty"`
	RateRatio float64 `json:"rate_ratio,omitempty"`
	Error     string  `json:"error,omitempty"`
}

// ResyncOptions configure RunResync.
type ResyncOptions struct {
	Region int64
	// FgRuntime is how long the baseline foreground latency run lasts.
	FgRuntime time.Duration
	// FgBytes, when positive, ends the baseline run after this much I/O instead.
	FgBytes int64
	// SyncRate, when positive, adds a rate-limited resync of about RateSeconds.
	SyncRate    int64
	RateSeconds float64
	Progress    func(format string, args ...any)
}

// dirty disconnects the secondary, writes the first n bytes of the volume (so every extent they
// touch is dirty), and reconnects; it returns once the sync has started, with its start time.
func dirty(ctx context.Context, pp *Pair, n int64) (time.Time, uint64, error) {
	if err := pp.Disconnect(ctx); err != nil {
		return time.Time{}, 0, err
	}
	w := Workload{Name: "dirty", BlockSize: 1 << 20, QueueDepth: 8, TotalBytes: n, Region: n, Seed: uint64(time.Now().UnixNano())}
	if _, err := Run(ctx, pp.Volume(), w); err != nil {
		pp.Reconnect()
		return time.Time{}, 0, fmt.Errorf("writing while disconnected: %w", err)
	}
	synced := pp.Volume().Status().Stats.SyncedBytes
	pp.drainEvents()
	pp.Reconnect()
	t0, err := pp.waitEvent(ctx, replicate.EventSyncStart)
	return t0, synced, err
}

func (pp *Pair) syncedBytes() uint64 { return pp.Volume().Status().Stats.SyncedBytes }

// RunResync runs the resynchronisation benchmark on pp (stopped or running; it is left
// stopped) against ideal's copy.
func RunResync(ctx context.Context, pp *Pair, ideal *Ideal, opt ResyncOptions) *ResyncResult {
	res := &ResyncResult{}
	if err := runResync(ctx, pp, ideal, opt, res); err != nil {
		res.Error = err.Error()
	}
	pp.Stop()
	return res
}

func runResync(ctx context.Context, pp *Pair, ideal *Ideal, opt ResyncOptions, res *ResyncResult) error {
	progress := opt.Progress
	if progress == nil {
		progress = func(string, ...any) {}
	}
	pp.Stop()
	if err := pp.Start(ctx, replicate.ModeFullsync, 0); err != nil {
		return err
	}
	region := opt.Region

	// The ideal copy of the same amount.
	cw := Workload{Name: "ideal-copy", BlockSize: 1 << 20, QueueDepth: 8, TotalBytes: region, Region: region}
	ir, err := Run(ctx, ideal.CopyTarget(), cw)
	if err != nil {
		return fmt.Errorf("ideal copy: %w", err)
	}
	res.IdealMiBps = ir.MiBps()
	progress("resync: ideal copy of %s at %.0f MiB/s", fmtBytes(region), res.IdealMiBps)

	// A full resync with nothing else running.
	t0, s0, err := dirty(ctx, pp, region)
	if err != nil {
		return err
	}
	t1, err := pp.waitEvent(ctx, replicate.EventSyncDone)
	if err != nil {
		return err
	}
	res.Bytes = int64(pp.syncedBytes() - s0)
	res.Seconds = t1.Sub(t0).Seconds()
	if res.Seconds > 0 {
		res.MiBps = float64(res.Bytes) / (1 << 20) / res.Seconds
	}
	if res.IdealMiBps > 0 {
		res.Ratio = res.MiBps / res.IdealMiBps
	}
	progress("resync: %s in %.2fs (%.0f MiB/s, %.2f× ideal)", fmtBytes(res.Bytes), res.Seconds, res.MiBps, res.Ratio)
	if err := pp.WaitSynced(ctx); err != nil {
		return err
	}

	// Foreground latency: without, then during a resync.
	fg := Workload{Name: WLatWrite, Pattern: Random, BlockSize: 4 << 10, QueueDepth: 1, Runtime: opt.FgRuntime, Region: region, Seed: 7}
	if opt.FgBytes > 0 {
		fg.Runtime, fg.TotalBytes = 0, opt.FgBytes
	}
	base, err := Run(ctx, pp.Volume(), fg)
	if err != nil {
		return fmt.Errorf("foreground baseline: %w", err)
	}
	res.BaseP50Us, res.BaseP99Us = us(base.Lat.Percentile(50)), us(base.Lat.Percentile(99))
	if _, _, err := dirty(ctx, pp, region); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() {
		pp.waitEvent(ctx, replicate.EventSyncDone)
		close(done)
	}()
	fg.Stop = done
	fg.Runtime, fg.TotalBytes = time.Hour, 0
	during, err := Run(ctx, pp.Volume(), fg)
	<-done
	if err != nil {
		return fmt.Errorf("foreground during resync: %w", err)
	}
	res.FgP50Us, res.FgP99Us = us(during.Lat.Percentile(50)), us(during.Lat.Percentile(99))
	if res.BaseP99Us > 0 {
		res.FgP99Ratio = res.FgP99Us / res.BaseP99Us
	}
	progress("resync: foreground p99 %s during resync, %s without", fmtUs(res.FgP99Us), fmtUs(res.BaseP99Us))
	if err := pp.WaitSynced(ctx); err != nil {
		return err
	}

	if opt.SyncRate <= 0 {
		return nil
	}
	pp.Stop()
	if err := pp.Start(ctx, replicate.ModeFullsync, opt.SyncRate); err != nil {
		return err
	}
	secs := opt.RateSeconds
	if secs <= 0 {
		secs = 3
	}
	n := min(region, int64(float64(opt.SyncRate)*secs))
	n = max(n&^(1<<20-1), 1<<20)
	t0, s0, err = dirty(ctx, pp, n)
	if err != nil {
		return err
	}
	t1, err = pp.waitEvent(ctx, replicate.EventSyncDone)
	if err != nil {
		return err
	}
	res.SyncRate = opt.SyncRate
	res.RateBytes = int64(pp.syncedBytes() - s0)
	if d := t1.Sub(t0).Seconds(); d > 0 {
		res.RateMiBps = float64(res.RateBytes) / (1 << 20) / d
		res.RateRatio = float64(res.RateBytes) / d / float64(opt.SyncRate)
	}
	progress("resync: rate-limited to %s/s: %.1f MiB/s (×%.2f)", fmtBytes(opt.SyncRate), res.RateMiBps, res.RateRatio)
	return pp.WaitSynced(ctx)
}
