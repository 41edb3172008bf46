package appliance

import "fmt"

// humanize formats n like FreeBSD's humanize_number(3) with HN_AUTOSCALE|HN_DECIMAL|HN_NOSPACE
// and a 5-character buffer, as hastctl does: "0", "512", "2.0M", "10G", "1.5K".
func humanize(n uint64) string {
	const units = "KMGTPE"
	if n < 1024 {
		return fmt.Sprintf("%d", n)
	}
	v := float64(n)
	i := -1
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	if v < 9.95 {
		// One decimal, truncated toward the nearest tenth as humanize_number rounds.
		return fmt.Sprintf("%.1f%c", v, units[i])
	}
	return fmt.Sprintf("%.0f%c", v, units[i])
}
