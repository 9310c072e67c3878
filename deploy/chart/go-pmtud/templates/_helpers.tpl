{{/* The name of every object: the release name, with the chart's name added unless it holds it. */}}
{{- define "go-pmtud.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* The NFLOG rules, with the group from the values. */}}
{{- define "go-pmtud.rule4" -}}
PREROUTING -p icmp --icmp-type fragmentation-needed -j NFLOG --nflog-group {{ .Values.nflogGroup }}
{{- end -}}
{{- define "go-pmtud.rule6" -}}
PREROUTING -p ipv6-icmp --icmpv6-type packet-too-big -j NFLOG --nflog-group {{ .Values.nflogGroup }}
{{- end -}}

{{/*
Checks the values that decide which objects exist; included by configmap.yaml,
which every rendering has.
*/}}
{{- define "go-pmtud.validate" -}}
{{- if not (has .Values.peersFrom (list "kubernetes" "file" "static")) }}
{{- fail (printf "values: peersFrom must be kubernetes, file or static, not %q" (toString .Values.peersFrom)) }}
{{- end }}
{{- if and (ne .Values.peersFrom "kubernetes") (not .Values.peers) }}
{{- fail (printf "values: peersFrom %s needs peers, the nodes' cluster addresses (or use peersFrom: kubernetes)" .Values.peersFrom) }}
{{- end }}
{{- if not (has .Values.relay (list "udp" "icmp" "l2")) }}
{{- fail "values: relay must be udp, icmp or l2" }}
{{- end }}
{{- if not (has .Values.manageRules (list "iptables-init" "nftables" "none")) }}
{{- fail (printf "values: manageRules must be iptables-init, nftables or none, not %q" (toString .Values.manageRules)) }}
{{- end }}
{{- end -}}

{{/* The directory the peers ConfigMap is mounted on (peersFrom: file), and the file in it. */}}
{{- define "go-pmtud.peersDir" -}}
/etc/go-pmtud-peers
{{- end -}}
{{- define "go-pmtud.peersFile" -}}
{{ include "go-pmtud.peersDir" . }}/peers
{{- end -}}
