package bench

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"strings"
)

// Chart geometry (pixels). Text is drawn at twice the font's size.
const (
	chartW     = 1240
	textScale  = 2
	charAdv    = (glyphW + 1) * textScale
	lineH      = (glyphH + 3) * textScale
	rowH       = 22
	labelX     = 10
	tputX      = 210 // throughput bars start
	tputW      = 300
	latX       = 640 // latency panel start
	latW       = 560
	groupGap   = 16
	latFloorUs = 10.0
)

var (
	colBG     = color.RGBA{255, 255, 255, 255}
	colText   = color.RGBA{20, 20, 20, 255}
	colGrid   = color.RGBA{215, 215, 215, 255}
	colAxis   = color.RGBA{120, 120, 120, 255}
	colSkip   = color.RGBA{170, 60, 60, 255}
	latColors = [3]color.RGBA{{40, 70, 160, 255}, {110, 150, 220, 255}, {190, 210, 240, 255}} // p50, p99, p99.9
	kindColor = map[string]color.RGBA{
		KindRaw: {90, 90, 90, 255}, KindIdeal: {150, 150, 150, 255}, KindVolume: {30, 120, 60, 255}, KindProbed: {90, 170, 110, 255},
		KindFUSE: {200, 120, 20, 255}, KindNBD: {120, 60, 170, 255}, KindNBDFile: {170, 110, 200, 255},
		KindNBDKit: {60, 140, 190, 255},
	}
)

type canvas struct{ *image.RGBA }

func (c canvas) fill(x0, y0, x1, y1 int, col color.RGBA) {
	r := image.Rect(x0, y0, x1, y1).Intersect(c.Bounds())
	for y := r.Min.Y; y < r.Max.Y; y++ {
		for x := r.Min.X; x < r.Max.X; x++ {
			c.SetRGBA(x, y, col)
		}
	}
}

// text draws s with its top-left corner at (x, y) and returns the x after it.
func (c canvas) text(x, y int, s string, col color.RGBA) int {
	for _, r := range s {
		g := glyph(r)
		for gy, row := range g {
			for gx, px := range row {
				if px != ' ' {
					c.fill(x+gx*textScale, y+gy*textScale, x+(gx+1)*textScale, y+(gy+1)*textScale, col)
				}
			}
		}
		x += charAdv
	}
	return x
}

func textWidth(s string) int { return len([]rune(s)) * charAdv }

// latPos maps a latency to an x in the latency panel (log scale from latFloorUs to top).
func latPos(v, top float64) int {
	if v <= latFloorUs {
		return latX
	}
	f := math.Log10(v/latFloorUs) / math.Log10(top/latFloorUs)
	return latX + int(math.Min(f, 1)*latW)
}

func fmtMiBps(v float64) string {
	if v >= 100 {
		return fmt.Sprintf("%.0f MiB/s", v)
	}
	return fmt.Sprintf("%.1f MiB/s", v)
}

// WritePNG draws the report as a PNG: per workload, throughput bars (MiB/s, linear, scaled to
// the workload's best row) and p50/p99/p99.9 latency bars (log scale) for every row.
func (rep *Report) WritePNG(w io.Writer) error {
	groups := rep.workloadGroups()
	h := 3*lineH + 10
	for _, rows := range groups {
		h += 2*lineH + len(rows)*rowH + groupGap
	}
	c := canvas{image.NewRGBA(image.Rect(0, 0, chartW, h))}
	c.fill(0, 0, chartW, h, colBG)

	y := 8
	m := rep.Machine
	c.text(labelX, y, fmt.Sprintf("hast bench: %d CPUs, Linux %s, disk %s %s", m.CPUs, m.Kernel, m.Disk, m.FileSystem), colText)
	y += lineH
	x := c.text(labelX, y, "throughput (MiB/s)", colText)
	x = c.text(latX, y, "latency: ", colText)
	for i, name := range []string{"p50 ", "p99 ", "p99.9"} {
		c.fill(x, y, x+3*textScale*2, y+glyphH*textScale, latColors[i])
		x = c.text(x+4*textScale*2, y, name, colText)
	}
	y += 2 * lineH

	for _, rows := range groups {
		r0 := rows[0]
		c.text(labelX, y, fmt.Sprintf("%s  (%s, bs %s, qd %d)", r0.Workload, r0.Source, fmtBytes(int64(r0.BlockSize)), r0.QueueDepth), colText)
		y += lineH
		maxT, maxL := 0.0, latFloorUs*10
		for _, r := range rows {
			if r.Stats != nil {
				maxT = math.Max(maxT, r.Stats.MiBps)
				maxL = math.Max(maxL, math.Max(r.Stats.LatP999Us, r.Stats.LatP99Us))
			}
		}
		top := math.Pow(10, math.Ceil(math.Log10(maxL)))
		// Latency axis: a grid line and label per decade.
		for d := latFloorUs; d <= top*1.0001; d *= 10 {
			gx := latPos(d, top)
			c.fill(gx, y+lineH-4, gx+1, y+lineH+len(rows)*rowH, colGrid)
			c.text(gx-textWidth(fmtUs(d))/2, y, strings.ReplaceAll(fmtUs(d), ".00", ""), colAxis)
		}
		y += lineH
		for _, r := range rows {
			c.text(labelX, y+3, r.Label(), colText)
			if r.Stats == nil {
				why := "skipped"
				if r.Error != "" {
					why = "error"
				}
				c.text(tputX, y+3, why, colSkip)
				y += rowH
				continue
			}
			col, ok := kindColor[r.Target]
			if !ok {
				col = kindColor[KindFUSE]
			}
			bw := 0
			if maxT > 0 {
				bw = int(r.Stats.MiBps / maxT * tputW)
			}
			c.fill(tputX, y+2, tputX+max(bw, 1), y+rowH-4, col)
			c.text(tputX+bw+6, y+3, fmtMiBps(r.Stats.MiBps), colText)
			lat := [3]float64{r.Stats.LatP50Us, r.Stats.LatP99Us, r.Stats.LatP999Us}
			for i := 2; i >= 0; i-- {
				c.fill(latX, y+2+i*2, latPos(lat[i], top), y+rowH-4-i*2, latColors[i])
			}
			c.fill(latX, y, latX+1, y+rowH, colAxis)
			y += rowH
		}
		c.fill(tputX, y-len(rows)*rowH, tputX+1, y, colAxis)
		y += groupGap
	}
	if err := png.Encode(w, c.RGBA); err != nil {
		return fmt.Errorf("encode PNG: %w", err)
	}
	return nil
}
