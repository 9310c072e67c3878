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
